"""The invariants gpufsm promises, as a checker anyone's tests (and the demo) can run."""

from __future__ import annotations

from collections.abc import Iterable

from gpufsm.machines import TRANSITIONS, Event, InstanceState
from gpufsm.store import InstanceStore

__all__ = ["check_invariants"]

_EDGES = {(src, t.event, t.dest) for t in TRANSITIONS for src in t.sources}


def check_invariants(store: InstanceStore, instance_ids: Iterable[str] | None = None
                     ) -> list[str]:
    """Return every broken invariant as a sentence; an empty list means all hold.

    Per instance: every history row is an edge of the table (launch first, from
    nothing); versions run 1, 2, 3 … with no gap; nothing follows TERMINATED; the row's
    state and version equal its last history row; a TERMINATED row is not billable.
    """
    problems: list[str] = []
    ids = list(instance_ids) if instance_ids is not None else [r.id for r in store.list()]
    for instance_id in ids:
        row = store.get(instance_id)
        history = store.history(instance_id)
        if not history:
            problems.append(f"{instance_id}: no history")
            continue
        first = history[0]
        if first.event is not Event.LAUNCH or first.from_state is not None:
            problems.append(f"{instance_id}: history does not start with launch")
        for i, h in enumerate(history, start=1):
            if h.version != i:
                problems.append(f"{instance_id}: history version {h.version} at position {i}")
            if i > 1 and (h.from_state, h.event, h.to_state) not in _EDGES:
                problems.append(
                    f"{instance_id}: {h.from_state} --{h.event}--> {h.to_state} is not an edge")
            if i > 1 and h.from_state != history[i - 2].to_state:
                problems.append(f"{instance_id}: history row {i} starts from {h.from_state}, "
                                f"previous ended in {history[i - 2].to_state}")
            if h.from_state is InstanceState.TERMINATED:
                problems.append(f"{instance_id}: a transition left TERMINATED")
        last = history[-1]
        if row.state is not last.to_state or row.version != last.version:
            problems.append(f"{instance_id}: row says {row.state} v{row.version}, history says "
                            f"{last.to_state} v{last.version}")
        if row.state is InstanceState.TERMINATED and row.billable:
            problems.append(f"{instance_id}: TERMINATED but still marked billable")
    return problems
