"""``gpufsm history <placement id>``: every attempt of a placement, and why it ended so.

A placement is a request for a GPU; each offer it tried is an instance row of its own.
This view groups them under the request: which offer, at which price, how it ended
(kept, refused with the provider's reason, unknown and watched, surplus and terminated).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from rich.markup import escape

from gpufsm.cli._common import EXIT_OK, stdout
from gpufsm.machines import InstanceState as S
from gpufsm.store import InstanceRecord, PlacementRecord, SqlInstanceStore, TransitionRecord

__all__ = ["find_placement", "show_placement"]


def find_placement(store: SqlInstanceStore, given: str) -> PlacementRecord | None:
    """The placement with this id or unique id prefix, else None (it names an instance)."""
    if not given:
        return None
    matches = [p for p in store.list_placements() if p.id.startswith(given)]
    return matches[0] if len(matches) == 1 else None


def show_placement(store: SqlInstanceStore, placement: PlacementRecord, *,
                   as_json: bool) -> int:
    attempts = store.attempts(placement.id)
    histories = store.history_many(r.id for r in attempts)
    outcomes = [(row, _outcome(placement, row, histories.get(row.id, ())))
                for row in attempts]
    if as_json:
        sys.stdout.write(json.dumps({
            "placement": placement.id, "state": placement.state.value,
            "winner": placement.winner_id, "requirements": placement.requirements,
            "created_at": placement.created_at.isoformat(), "reason": placement.reason,
            "attempts": [{
                "instance_id": row.id, "provider": row.provider,
                "instance_type": row.instance_type, "region": row.region,
                "state": row.state.value, "billable": row.billable,
                "price_per_hour": row.price_per_hour, "outcome": why,
            } for row, why in outcomes]}, indent=2) + "\n")
        return EXIT_OK
    # Lines, not a table: ids, offers and the providers' reasons are what a person
    # reads and copies, and a table at 80 columns cuts or splits them.
    stdout.print(f"placement {placement.id}: {placement.state.value}", highlight=False)
    for n, (row, why) in enumerate(outcomes, 1):
        offer = f"{row.provider}/{row.instance_type}" + (f"@{row.region}" if row.region
                                                          else "")
        stdout.print(f"{n}. {escape(offer)}  {row.state.value}  {row.id}", highlight=False,
                     soft_wrap=True)
        stdout.print(f"   {escape(why)}", highlight=False, soft_wrap=True)
    if not attempts:
        stdout.print("no attempt was made (no offer matched, or every one was skipped)",
                     highlight=False)
    return EXIT_OK


def _outcome(placement: PlacementRecord, row: InstanceRecord,
             history: Sequence[TransitionRecord]) -> str:
    """How one attempt ended, in words: its last reason, or what it is now."""
    if row.id == placement.winner_id:
        return "kept" + (" (since terminated)" if row.state is S.TERMINATED else "")
    if row.state is S.CREATING and row.billable:
        return "outcome unknown: watched; terminated if its machine turns up"
    last = next((h.reason for h in reversed(history) if h.reason), None)
    return last or row.state.value
