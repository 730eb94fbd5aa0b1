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
from gpufsm.engine._decide import Row, facts_after, row_after
from gpufsm.engine._decision import NOTHING, Decision, Health, Need
from gpufsm.engine._health import gate_health
from gpufsm.engine._locks import Held
from gpufsm.engine._observe import decide_for, log_notes
from gpufsm.errors import GpufsmError
from gpufsm.notify import TransitionEvent
from gpufsm.store import BatchOutcome, DriftNote, InstanceRecord, Move, RowWrite, TrackedInstance

__all__ = ["Outcome", "observe_batch", "write_batch"]

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


def observe_batch(engine: Engine, items: Sequence[tuple[Any, Observation]], actor: str
                  ) -> list[Outcome | None]:
    """Decide every item at one instant, then commit (see the module docstring)."""
    now = engine.clock.now()
    results: list[Outcome | None] = [None] * len(items)
    plans: list[_Plan] = []
    probing: list[_Plan] = []
    for plan in _planned(engine, items, now, results):
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


def _planned(engine: Engine, items: Sequence[tuple[Any, Observation]], now: datetime,
             results: list[Outcome | None]) -> list[_Plan]:
    """Every item decided. An item with nothing to write or say is done at once (its
    Outcome in ``results``: most rows of a pass, so no plan is made for them). A slim
    row that cannot tell (``needs`` the record) is decided again on its full record;
    those records are read together, in one query per thousand rows."""
    plans: list[_Plan] = []
    slim: list[_Plan] = []
    for i, (row, observation) in enumerate(items):
        decision = _decision(engine, row, observation, now)
        if decision is None:
            continue
        if decision is NOTHING:
            results[i] = Outcome(row)
            continue
        plan = _Plan(i, row, observation, decision)
        needs_record = (plan.decision.needs is not None
                        and not isinstance(row, InstanceRecord))
        (slim if needs_record else plans).append(plan)
    records = engine.store.get_many(p.row.id for p in slim) if slim else {}
    for plan in slim:
        plan.row = records.get(plan.row.id, plan.row)  # a vanished row: the single path
        again = _decision(engine, plan.row, plan.observation, now)
        if again is not None:
            plan.decision = again
            plans.append(plan)
    return plans


def _decision(engine: Engine, row: Row, observation: Observation, now: datetime
              ) -> Decision | None:
    """The row's decision, or None when deciding failed (the single path meets the same
    row again, and reports it)."""
    try:
        return decide_for(engine, row, observation, now=now)
    except Exception:
        log.debug("deciding the observation of %s failed", row.id, exc_info=True)
        return None


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
    """Every plan's moves, drift and facts in one ``apply_batch``: one transaction.

    Each row's lock is taken without waiting: one held by another thread (a command
    under way) is left to the single path, which waits its turn.
    """
    held: list[Held] = []
    built: list[_Built] = []
    for plan in plans:
        lock = engine._lock(plan.row.id)
        if not lock.try_acquire():
            continue
        held.append(lock)
        one = _built(engine, plan, actor, now)
        if one is not None:
            built.append(one)
    try:
        outcome = write_batch(engine, [b.write for b in built], actor=actor, at=now,
                              what="observations")
        if outcome is None:
            return
        for one in built:
            if one.write.instance_id in outcome.applied:
                for heard in one.heard:
                    engine._notify(heard)
                log_notes(one.plan.decision)
                results[one.plan.index] = Outcome(
                    _kind_of(one.after, items[one.plan.index][0]), one.write.moves)
    finally:
        for lock in held:
            lock.release()


@dataclass(frozen=True, slots=True)
class _Built:
    """A plan as its RowWrite, what listeners hear once it commits, and the row after."""

    plan: _Plan
    write: RowWrite
    heard: tuple[TransitionEvent, ...]
    after: Row


def _built(engine: Engine, plan: _Plan, actor: str, now: datetime) -> _Built | None:
    """The plan's steps fired through the machine, one after the other, and its drift
    and facts: None when the machine refuses a step (the single path raises it)."""
    decision = plan.decision
    row: Row = plan.row
    moves: list[Move] = []
    heard: list[TransitionEvent] = []
    for step in decision.steps:
        try:
            move, announced = engine._move(row, step.event, at=now, reason=step.reason,
                                           raw_status=step.raw_status, changes=step.changes,
                                           actor=actor)
        except GpufsmError:
            return None
        moves.append(move)
        heard.append(announced)
        row = row_after(row, move, now)
    drift = None if decision.drift is None else DriftNote(
        decision.drift.event, decision.drift.raw_status, decision.drift.reason)
    if decision.facts is not None:
        row = facts_after(row, decision.facts, now)
    write = RowWrite(plan.row.id, plan.row.version, plan.row.state, tuple(moves), drift,
                     decision.facts)
    return _Built(plan, write, tuple(heard), row)


def write_batch(engine: Engine, writes: Sequence[RowWrite], *, actor: str, at: datetime,
                what: str) -> BatchOutcome | None:
    """One ``apply_batch``; None when the write failed (logged), and the caller then
    leaves every item to its single path, which re-reads and retries."""
    if not writes:
        return BatchOutcome({})
    try:
        return engine.store.apply_batch(writes, actor=actor, at=at)
    except Exception:
        log.warning("batched write of %d %s failed: doing them one by one", len(writes),
                    what, exc_info=True)
        return None


def _kind_of(row: Row, given: Any) -> Any:
    """``row`` in the shape the caller gave (a TrackedInstance stays one)."""
    if isinstance(given, TrackedInstance) and isinstance(row, InstanceRecord):
        return TrackedInstance.of(row)
    return row
