"""``gpufsm history <run id>``: every generation of a recovering run, and how each ended.

A run (``gpufsm run --recover N``, ``fleet.session(..., recovery=N)``) launches a
replacement when its machine is lost; each machine is an instance row carrying the run's
id and its generation. This view puts them in order under the run: which machine, how
it ended (lost, with the provider's word; ended with the run), and what they cost in all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from rich.markup import escape

from gpufsm.cli import _cost
from gpufsm.cli._common import EXIT_OK, stdout
from gpufsm.ledger import Ledger
from gpufsm.machines import Event
from gpufsm.store import SqlInstanceStore, TransitionRecord

__all__ = ["show_run"]


def show_run(store: SqlInstanceStore, run_id: str, *, as_json: bool) -> int:
    rows = store.generations(run_id)
    histories = store.history_many(r.id for r in rows)
    ledger = Ledger.of(rows, histories, now=_cost.CLOCK.now(),
                       prices=store.price_points(r.id for r in rows))
    costs = {row.record.id: row.cost for row in ledger.rows}
    ends = [(row, _end(histories.get(row.id, ()))) for row in rows]
    if as_json:
        sys.stdout.write(json.dumps({
            "run": run_id, "cost": ledger.total, "burn_per_hour": ledger.burn_rate,
            "machines": [{
                "generation": row.generation, "instance_id": row.id,
                "placement_id": row.placement_id, "provider": row.provider,
                "instance_type": row.instance_type, "region": row.region,
                "state": row.state.value, "billable": row.billable,
                "cost": costs.get(row.id, 0.0), "ended": why,
            } for row, why in ends]}, indent=2) + "\n")
        return EXIT_OK
    generations = len({row.generation for row in rows})
    stdout.print(f"run {run_id}: {generations} generation(s), {len(rows)} machine row(s); "
                 f"cost ${ledger.total:.4f} (from their history)", highlight=False,
                 soft_wrap=True)
    for row, why in ends:
        where = f"{row.provider}/{row.instance_type}" + (f"@{row.region}" if row.region
                                                          else "")
        stdout.print(f"generation {row.generation}  {escape(where)}  {row.state.value}  "
                     f"{row.id}  ${costs.get(row.id, 0.0):.4f}", highlight=False,
                     soft_wrap=True)
        stdout.print(f"   {escape(why)}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _end(history: Sequence[TransitionRecord]) -> str:
    """How a machine of the run ended: the reason its terminate was asked for (the
    recovery says there which generation was lost and why), else its last reason."""
    for h in history:
        if h.event is Event.TERMINATE and h.reason:
            return h.reason
    last = next((h.reason for h in reversed(history) if h.reason), None)
    return last or "running"
