"""Observations, one or a batch: ``decide`` each, then commit what was decided.

The single path (``observe_one``) reads the row under its lock, decides, and commits
through ``store.transition`` / ``record_drift`` / ``update``, re-reading on a
VersionConflict. Health probes run between two holds of the lock, never inside one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from gpufsm.adapters import Observation
from gpufsm.engine._context import Engine
from gpufsm.engine._decide import Row, decide
from gpufsm.engine._decision import Decision, Health, Need
from gpufsm.engine._health import gate_health
from gpufsm.errors import VersionConflict
from gpufsm.store import InstanceRecord

__all__ = ["apply_one", "decide_for", "log_notes", "observe_one"]

log = logging.getLogger("gpufsm.fleet")

_CONFLICT_RETRIES = 3


def decide_for(engine: Engine, row: Row, observation: Observation, *, now: datetime,
               grace: bool = True, health: Health | None = None) -> Decision:
    """``decide`` with this engine's windows for the row's provider."""
    return decide(row, observation, now=now, window=engine._window(row.provider),
                  command_grace=engine.command_grace, grace=grace, health=health)


def observe_one(engine: Engine, instance_id: str, observation: Observation, actor: str, *,
                grace: bool = True, current: InstanceRecord | None = None
                ) -> InstanceRecord:
    """Decide and commit one observation, re-reading on a conflict (three tries).

    ``current``: the row as the caller just wrote or read it, decided on without a read
    (a stale one only costs a conflict and a re-read)."""
    health: Health | None = None
    conflicts = 0
    while conflicts < _CONFLICT_RETRIES:
        with engine._lock(instance_id):
            record = current or engine.store.get(instance_id)
            current = None
            decision = decide_for(engine, record, observation, now=engine.clock.now(),
                                  grace=grace, health=health)
            if decision.needs is None:
                try:
                    return apply_one(engine, record, decision, actor)
                except VersionConflict:
                    conflicts += 1
                    continue
        if decision.needs is Need.PROBES:  # outside the lock: probes are network I/O
            health = gate_health(record, observation.instance, engine.clock)
    with engine._lock(instance_id):
        return engine.store.get(instance_id)


def apply_one(engine: Engine, record: InstanceRecord, decision: Decision, actor: str
              ) -> InstanceRecord:
    """Commit one decision: its moves, its drift, its facts, in that order."""
    for step in decision.steps:
        record = engine._apply(record, step.event, reason=step.reason,
                               raw_status=step.raw_status, changes=step.changes, actor=actor)
    if decision.drift is not None:
        drift = decision.drift
        engine.store.record_drift(record.id, state=record.state, event=drift.event,
                                  actor=actor, at=engine.clock.now(),
                                  raw_status=drift.raw_status, reason=drift.reason)
    if decision.facts is not None:
        record = engine.store.update(record.id, expected_version=record.version,
                                     at=engine.clock.now(), changes=decision.facts)
    log_notes(decision)
    return record


def log_notes(decision: Decision | Sequence[Decision]) -> None:
    """Emit the log lines of decisions that were committed (once each)."""
    for one in (decision,) if isinstance(decision, Decision) else decision:
        for level, message in one.notes:
            log.log(level, "%s", message)
