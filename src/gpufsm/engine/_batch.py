"""Many observations at once: decide every row, run the probes the gate asked for
across rows on a small thread pool, and commit the moves of the whole batch together.

``observe_batch`` answers, per item, an ``Outcome`` (the row after, of the kind given,
and the moves committed for it) or None: the row could not be done here (another
thread holds it, it moved since it was read, or its write failed) and goes to
``observe_one``, which re-reads and re-decides it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpufsm.adapters import Observation
from gpufsm.engine._context import Engine
from gpufsm.engine._decide import Row, row_after
from gpufsm.engine._decision import Decision, Health, Need
from gpufsm.engine._health import gate_health
from gpufsm.engine._locks import Held
from gpufsm.engine._observe import decide_for, log_notes
from gpufsm.errors import GpufsmError
from gpufsm.notify import TransitionEvent
from gpufsm.store import BatchOutcome, InstanceRecord, Move, TrackedInstance

__all__ = ["Outcome", "observe_batch", "write_moves"]

log = logging.getLogger("gpufsm.fleet")

#: Rows whose health probes run at once (each round is itself parallel per probe).
PROBE_WORKERS = 8


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item done by the batch: the row after it, and the moves committed for it."""

    after: Any  # InstanceRecord or TrackedInstance, as given
    moves: tuple[Move, ...] = ()


@dataclass(slots=True)
class _Plan:
    index: int
    row: Any
    observation: Observation
    decision: Decision
    moves: tuple[Move, ...] = ()


def observe_batch(engine: Engine, items: Sequence[tuple[Any, Observation]], actor: str
                  ) -> list[Outcome | None]:
    """Decide every item at one instant, then commit (see the module docstring)."""
    now = engine.clock.now()
    results: list[Outcome | None] = [None] * len(items)
    plans: list[_Plan] = []
    probing: list[_Plan] = []
    for plan in _planned(engine, items, now):
        (probing if plan.decision.needs is Need.PROBES else plans).append(plan)
    plans.extend(_probed(engine, probing, now))
    plans.sort(key=lambda p: p.index)
    quiet = [p for p in plans if not p.decision.writes]
    for plan in quiet:
        results[plan.index] = Outcome(_kind_of(plan.row, items[plan.index][0]))
    log_notes([p.decision for p in quiet])
    _commit(engine, [p for p in plans if p.decision.writes], items, results, actor=actor,
            now=now)
    return results


def _planned(engine: Engine, items: Sequence[tuple[Any, Observation]], now: datetime
             ) -> list[_Plan]:
    """Every item decided. A slim row that cannot tell (``needs`` the record) is decided
    again on its full record; those records are read together, in one query per
    thousand rows, not one read each."""
    plans: list[_Plan] = []
    slim: list[_Plan] = []
    for i, (row, observation) in enumerate(items):
        plan = _decided(engine, _Plan(i, row, observation, Decision()), now)
        if plan is None:
            continue
        needs_record = (plan.decision.needs is not None
                        and not isinstance(row, InstanceRecord))
        (slim if needs_record else plans).append(plan)
    records = engine.store.get_many(p.row.id for p in slim) if slim else {}
    for plan in slim:
        plan.row = records.get(plan.row.id, plan.row)  # a vanished row: the single path
        decided = _decided(engine, plan, now)
        if decided is not None:
            plans.append(decided)
    return plans


def _decided(engine: Engine, plan: _Plan, now: datetime) -> _Plan | None:
    """``plan`` with its decision, or None when deciding failed (the single path meets
    the same row again, and reports it)."""
    try:
        plan.decision = decide_for(engine, plan.row, plan.observation, now=now)
    except Exception:
        log.debug("deciding the observation of %s failed", plan.row.id, exc_info=True)
        return None
    return plan


def _probed(engine: Engine, plans: Sequence[_Plan], now: datetime) -> list[_Plan]:
    """Run the gate's probes for every plan that asked, a few rows at a time."""
    if not plans:
        return []

    def health(plan: _Plan) -> Health:
        return gate_health(plan.row, plan.observation.instance, engine.clock)

    if len(plans) == 1:
        rounds = [health(plans[0])]
    else:
        with ThreadPoolExecutor(min(PROBE_WORKERS, len(plans))) as pool:
            rounds = list(pool.map(health, plans))
    for plan, got in zip(plans, rounds, strict=True):
        plan.decision = decide_for(engine, plan.row, plan.observation, now=now, health=got)
    return [p for p in plans if p.decision.needs is None]


def _commit(engine: Engine, plans: list[_Plan], items: Sequence[tuple[Any, Observation]],
            results: list[Outcome | None], *, actor: str, now: datetime) -> None:
    """Moves first (one transaction per round of steps), then drift and facts per row.

    Each row's lock is taken without waiting: one held by another thread (a command
    under way) is left to the single path, which waits its turn.
    """
    held: list[Held] = []
    mine: list[_Plan] = []
    for plan in plans:
        lock = engine._lock(plan.row.id)
        if lock.try_acquire():
            held.append(lock)
            mine.append(plan)
    try:
        for round_ in range(2):  # a CREATING row found running moves twice
            moving = [p for p in mine if len(p.decision.steps) > round_]
            mine = [p for p in mine if len(p.decision.steps) <= round_
                    ] + _move(engine, moving, round_, actor, now)
        for plan in sorted(mine, key=lambda p: p.index):
            after = _finish(engine, plan, actor, now)
            if after is not None:
                results[plan.index] = Outcome(_kind_of(after, items[plan.index][0]),
                                              plan.moves)
    finally:
        for lock in held:
            lock.release()


def _move(engine: Engine, plans: list[_Plan], round_: int, actor: str, now: datetime
          ) -> list[_Plan]:
    """Commit step ``round_`` of every plan in one ``transition_many``; the plans it
    applied (their rows moved on), the others left to the single path."""
    if not plans:
        return []
    built: list[tuple[_Plan, Move, TransitionEvent]] = []
    for plan in plans:
        step = plan.decision.steps[round_]
        try:
            move, heard = engine._move(plan.row, step.event, at=now, reason=step.reason,
                                       raw_status=step.raw_status, changes=step.changes,
                                       actor=actor)
        except GpufsmError:
            continue  # refused by the machine: the single path raises it to the caller
        built.append((plan, move, heard))
    outcome = write_moves(engine, [m for _, m, _ in built], actor=actor, at=now,
                          what="observations")
    if outcome is None:
        return []
    done = []
    for plan, move, heard in built:
        if move.instance_id in outcome.applied:
            plan.row = row_after(plan.row, move, now)
            plan.moves = (*plan.moves, move)
            engine._notify(heard)
            done.append(plan)
    return done


def write_moves(engine: Engine, moves: Sequence[Move], *, actor: str, at: datetime,
                what: str) -> BatchOutcome | None:
    """One ``transition_many`` for a batch; None when the write failed (logged), and the
    caller then leaves every item to its single path, which re-reads and retries."""
    try:
        return engine.store.transition_many(moves, actor=actor, at=at)
    except Exception:
        log.warning("batched write of %d %s failed: doing them one by one", len(moves),
                    what, exc_info=True)
        return None


def _finish(engine: Engine, plan: _Plan, actor: str, now: datetime) -> Row | None:
    """The drift and facts of one plan whose moves are committed; None if they failed."""
    decision = plan.decision
    row: Row = plan.row
    try:
        if decision.drift is not None:
            engine.store.record_drift(row.id, state=row.state, event=decision.drift.event,
                                      actor=actor, at=now, raw_status=decision.drift.raw_status,
                                      reason=decision.drift.reason)
        if decision.facts is not None:
            row = engine.store.update(row.id, expected_version=row.version, at=now,
                                      changes=decision.facts)
    except Exception:  # the single path re-reads the row and finishes it
        log.debug("writing the observation of %s failed", row.id, exc_info=True)
        return None
    log_notes(decision)
    return row


def _kind_of(row: Row, given: Any) -> Any:
    """``row`` in the shape the caller gave (a TrackedInstance stays one)."""
    if isinstance(given, TrackedInstance) and isinstance(row, InstanceRecord):
        return TrackedInstance.of(row)
    return row
