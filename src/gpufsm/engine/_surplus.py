"""One machine per placement: which live attempts must go, and which may win.

A placement's attempts can leave more than one machine: an attempt whose outcome was
unknown turns up after a later one won, or after the placement gave up, or a process
died between a launch and its claim. This sweep (run by every reconcile pass) reads
those rows in one query (``store.surplus_rows``) and decides each:

* a known machine of an OPEN placement with no winner claims the win (the oldest
  first): whoever asked for it gets one machine, even if the asking process died;
* every other live attempt of a placement that has a winner, or that FAILED, is
  surplus: returned with its reason, for the caller to terminate.
"""

from __future__ import annotations

from gpufsm.engine._context import Engine
from gpufsm.store import PlacementState, SurplusRow

__all__ = ["sweep_surplus"]


def sweep_surplus(engine: Engine) -> list[tuple[str, str]]:
    """(instance id, reason) of every machine its placement may not keep."""
    ending: list[tuple[str, str]] = []
    winners: dict[str, str | None] = {}
    for row in engine.store.surplus_rows():
        winner = winners.get(row.placement_id, row.winner_id)
        if winner is None and row.placement_state is PlacementState.OPEN:
            if not row.has_provider_id:
                continue  # outcome still unknown: nothing to claim or to terminate yet
            placement = engine.store.claim_winner(row.placement_id, row.instance_id,
                                                  at=engine.clock.now())
            winner = winners[row.placement_id] = placement.winner_id
            if winner == row.instance_id:
                continue
        ending.append((row.instance_id, _why(row, winner)))
    return ending


def _why(row: SurplusRow, winner: str | None) -> str:
    if winner is not None:
        return f"surplus: placement {row.placement_id} keeps {winner}"
    return f"surplus: placement {row.placement_id} failed before this machine turned up"
