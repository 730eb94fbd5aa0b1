"""The persistence contract the engine and reconciler rely on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store._records import (
    BatchOutcome,
    DriftRecord,
    InstanceRecord,
    Move,
    OutboxMessage,
    TrackedInstance,
    TransitionRecord,
)

__all__ = ["InstanceStore"]


@runtime_checkable
class InstanceStore(Protocol):
    """Rows of instances and their history.

    Every write checks the version the caller read (optimistic concurrency) and raises
    VersionConflict when someone else moved the row first. A transition and its history
    row are committed together or not at all.

    For fleets: ``transition_many`` commits many moves in one transaction and reports
    the stale ones (``BatchOutcome.conflicts``) instead of raising; ``list_tracked``
    returns the slim TrackedInstance view of the rows ``list`` returns,
    ``find_tracked`` is ``find`` for many tags and provider ids at once, and
    ``history_many`` is ``history`` for many rows (id → its history, oldest first),
    and ``get_many`` is ``get`` for many rows (id → record; missing ids left out).
    """

    def insert(self, record: InstanceRecord, *, actor: str, reason: str | None = None,
               outbox: Sequence[tuple[str, dict[str, Any]]] = (),
               then: Sequence[Move] = ()) -> InstanceRecord: ...

    def transition(
        self,
        instance_id: str,
        *,
        expected_version: int,
        from_state: InstanceState,
        to_state: InstanceState,
        event: Event,
        kind: EdgeKind,
        actor: str,
        at: datetime,
        reason: str | None = None,
        raw_status: str | None = None,
        changes: Mapping[str, Any] | None = None,
        outbox: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> InstanceRecord: ...

    def transition_many(self, moves: Sequence[Move], *, actor: str, at: datetime
                        ) -> BatchOutcome: ...

    def update(self, instance_id: str, *, expected_version: int, at: datetime,
               changes: Mapping[str, Any]) -> InstanceRecord: ...

    def record_drift(self, instance_id: str, *, state: InstanceState, event: Event,
                     actor: str, at: datetime, raw_status: str | None = None,
                     reason: str | None = None) -> DriftRecord: ...

    def get(self, instance_id: str) -> InstanceRecord: ...

    def find(self, provider: str, *, provider_instance_id: str | None = None,
             tag: str | None = None) -> InstanceRecord | None: ...

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]: ...

    def find_tracked(self, provider: str, *, tags: Iterable[str] = (),
                     provider_instance_ids: Iterable[str] = ()) -> Sequence[TrackedInstance]: ...

    def list_tracked(self, *, provider: str | None = None,
                     states: Iterable[InstanceState] | None = None
                     ) -> Sequence[TrackedInstance]: ...

    def history(self, instance_id: str) -> Sequence[TransitionRecord]: ...

    def history_many(self, instance_ids: Iterable[str]
                     ) -> Mapping[str, Sequence[TransitionRecord]]: ...

    def get_many(self, instance_ids: Iterable[str]) -> Mapping[str, InstanceRecord]: ...

    def claim(self, owner: str, instance_ids: Sequence[str], *, now: datetime,
              ttl: float, limit: int | None = None) -> Sequence[InstanceRecord]: ...

    def release(self, owner: str, instance_ids: Sequence[str] | None = None) -> int: ...

    def claim_outbox(self, *, now: datetime, hold: float, limit: int = 100
                     ) -> Sequence[OutboxMessage]: ...

    def outbox_done(self, seq: int, *, at: datetime) -> None: ...

    def outbox_failed(self, seq: int, *, error: str, next_attempt_at: datetime | None
                      ) -> None: ...

    def drift(self, instance_id: str) -> Sequence[DriftRecord]: ...

    def close(self) -> None: ...
