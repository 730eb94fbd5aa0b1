"""The persistence contract the engine and reconciler rely on, one protocol per role.

``InstanceRows`` (rows, their history and drift) is what the engine needs; ``Leases``
is how daemons share rows; ``Outbox`` is the webhook queue; ``Placements`` holds
requests for a GPU and the offers refused lately. ``InstanceStore`` is all four, which
``SqlInstanceStore`` implements; a test double may implement one role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from gpufsm.machines import Event, InstanceState
from gpufsm.store._records import (
    BatchOutcome,
    BlockedOffer,
    DriftRecord,
    InstanceRecord,
    Move,
    OutboxMessage,
    PlacementRecord,
    PlacementState,
    PricePoint,
    RowWrite,
    SurplusRow,
    TrackedInstance,
    TransitionRecord,
)

__all__ = ["InstanceRows", "InstanceStore", "Leases", "Outbox", "Placements"]


@runtime_checkable
class InstanceRows(Protocol):
    """Rows of instances, their history and their drift.

    Every write checks the version the caller read (optimistic concurrency) and raises
    VersionConflict when someone else moved the row first. A transition and its history
    row are committed together or not at all.

    For fleets: ``apply_batch`` commits many rows' writes (moves, drift, facts) in one
    transaction and reports the stale rows (``BatchOutcome.conflicts``) instead of
    raising, and ``transition_many`` is it for one move per row; ``list_tracked``
    returns the slim TrackedInstance view of the rows ``list`` returns; ``find_tracked``
    is ``find`` for many tags and provider ids at once; ``history_many`` is ``history``
    for many rows (id → its history, oldest first), and ``get_many`` is ``get`` for
    many rows (id → record; missing ids left out); ``price_points`` is each row's
    prices as they changed (id → points, oldest first), which the ledger prices by.

    For spend budgets: ``rows_since`` is every row that may have billed at or after a
    time (not finished, or finished since), and ``rows_of_runs`` every row of some
    recovering runs and placements; both full records, oldest first.
    """

    def insert(self, record: InstanceRecord, *, actor: str, reason: str | None = None,
               outbox: Sequence[tuple[str, dict[str, Any]]] = (),
               then: Sequence[Move] = ()) -> InstanceRecord: ...

    def transition(self, move: Move, *, actor: str, at: datetime) -> InstanceRecord: ...

    def transition_many(self, moves: Sequence[Move], *, actor: str, at: datetime
                        ) -> BatchOutcome: ...

    def apply_batch(self, writes: Sequence[RowWrite], *, actor: str, at: datetime
                    ) -> BatchOutcome: ...

    def update(self, instance_id: str, *, expected_version: int, at: datetime,
               changes: Mapping[str, Any]) -> InstanceRecord: ...

    def price_points(self, instance_ids: Iterable[str]) -> Mapping[str, Sequence[PricePoint]]:
        ...

    def record_drift(self, instance_id: str, *, state: InstanceState, event: Event,
                     actor: str, at: datetime, raw_status: str | None = None,
                     reason: str | None = None) -> DriftRecord: ...

    def get(self, instance_id: str) -> InstanceRecord: ...

    def get_many(self, instance_ids: Iterable[str]) -> Mapping[str, InstanceRecord]: ...

    def find(self, provider: str, *, provider_instance_id: str | None = None,
             tag: str | None = None) -> InstanceRecord | None: ...

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]: ...

    def find_tracked(self, provider: str, *, tags: Iterable[str] = (),
                     provider_instance_ids: Iterable[str] = ()) -> Sequence[TrackedInstance]: ...

    def list_tracked(self, *, provider: str | None = None,
                     states: Iterable[InstanceState] | None = None
                     ) -> Sequence[TrackedInstance]: ...

    def rows_since(self, since: datetime) -> Sequence[InstanceRecord]: ...

    def rows_of_runs(self, *, run_ids: Iterable[str] = (),
                     placement_ids: Iterable[str] = ()) -> Sequence[InstanceRecord]: ...

    def history(self, instance_id: str) -> Sequence[TransitionRecord]: ...

    def history_many(self, instance_ids: Iterable[str]
                     ) -> Mapping[str, Sequence[TransitionRecord]]: ...

    def drift(self, instance_id: str) -> Sequence[DriftRecord]: ...


@runtime_checkable
class Leases(Protocol):
    """Which daemon acts on which rows (several daemons on one PostgreSQL)."""

    def claim(self, owner: str, *, now: datetime, ttl: float, limit: int | None = None
              ) -> Sequence[TrackedInstance]: ...

    def release(self, owner: str, instance_ids: Sequence[str] | None = None) -> int: ...


@runtime_checkable
class Outbox(Protocol):
    """Webhook messages committed with their transitions, delivered afterwards."""

    def claim_outbox(self, *, now: datetime, hold: float, limit: int = 100
                     ) -> Sequence[OutboxMessage]: ...

    def outbox_done(self, seq: int, *, at: datetime) -> None: ...

    def outbox_failed(self, seq: int, *, error: str, next_attempt_at: datetime | None
                      ) -> None: ...


@runtime_checkable
class Placements(Protocol):
    """Requests for a GPU: one winner each (claimed atomically), and refused offers."""

    def open_placement(self, placement: PlacementRecord) -> PlacementRecord: ...

    def get_placement(self, placement_id: str) -> PlacementRecord: ...

    def list_placements(self, *, states: Iterable[PlacementState] | None = None
                        ) -> Sequence[PlacementRecord]: ...

    def claim_winner(self, placement_id: str, instance_id: str, *, at: datetime
                     ) -> PlacementRecord: ...

    def fail_placement(self, placement_id: str, *, reason: str, at: datetime
                       ) -> PlacementRecord: ...

    def attempts(self, placement_id: str) -> Sequence[InstanceRecord]: ...

    def generations(self, run_id: str) -> Sequence[InstanceRecord]: ...

    def find_run(self, prefix: str) -> str | None: ...

    def surplus_rows(self) -> Sequence[SurplusRow]: ...

    def block_offer(self, offer: BlockedOffer) -> None: ...

    def blocked_offers(self, *, now: datetime) -> Sequence[BlockedOffer]: ...


@runtime_checkable
class InstanceStore(InstanceRows, Leases, Outbox, Placements, Protocol):
    """Every role in one database."""

    def close(self) -> None: ...
