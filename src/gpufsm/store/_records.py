"""Plain, frozen values the store hands out: never live ORM objects.

Frozen dataclasses with slots cost a fraction of an ORM instance and cannot be mutated
behind the store's back, so "what the engine reports" and "what the row says" can only
diverge through a write that went through the version check.

Two shapes of an instance row: ``InstanceRecord`` (every column, the spec decoded) for
anyone who asks about one instance, and ``TrackedInstance`` (a NamedTuple of what a
reconcile pass reads) for holding a whole fleet: 100k records with their spec dicts
cost over 300 MB and seconds to decode; 100k tracked tuples a fifth of that.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from gpufsm.machines import EdgeKind, Event, InstanceState

__all__ = ["MUTABLE_FIELDS", "BatchOutcome", "BlockedOffer", "DriftNote", "DriftRecord",
           "InstanceRecord", "Move", "OutboxMessage", "PlacementRecord", "PlacementState",
           "PricePoint", "RowWrite", "SurplusRow", "TrackedInstance", "TransitionRecord"]

#: Columns a write may change besides state and version. Anything else is a bug.
MUTABLE_FIELDS = frozenset({
    "provider_instance_id", "billable", "ip", "region", "instance_type", "price_per_hour",
    "last_raw_status", "last_error", "name", "last_seen_at", "health", "accepted_at",
    "missing_since", "missing_count",
})


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance row. ``version`` counts the transitions applied to it (launch = 1)."""

    id: str
    provider: str
    state: InstanceState
    version: int
    client_token: str
    tag: str
    name: str | None
    billable: bool
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    state_entered_at: datetime
    provider_instance_id: str | None = None
    region: str | None = None
    instance_type: str | None = None
    price_per_hour: float | None = None
    ip: str | None = None
    last_raw_status: str | None = None
    last_error: str | None = None
    last_seen_at: datetime | None = None
    previous_state: InstanceState | None = None  # the state before the current one
    entered_by: Event = Event.LAUNCH  # the event that entered the current state
    #: the health gate: {"running_since", "verdict", "results": [probe results]}
    health: dict[str, Any] | None = None
    #: when the provider accepted the launch (its id became known) or the row adopted a
    #: listed instance: a not-found inside the visibility window after it proves nothing
    accepted_at: datetime | None = None
    #: good listings in a row without this row's tag (rows without a provider id), and
    #: since when: persisted, so a cron ``reconcile --once`` counts as a daemon does
    missing_since: datetime | None = None
    missing_count: int = 0
    #: the placement (a request for a GPU) this row is an attempt of, if any
    placement_id: str | None = None
    #: the recovering run this row is a generation of (``fleet.session(recovery=...)``),
    #: and its generation: 1 for the first machine, 2 for its replacement, ...
    run_id: str | None = None
    generation: int | None = None

    def with_changes(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class PricePoint:
    """A machine's price as its provider reported it, holding from ``at`` until the next
    point. The store records one when a row's price first becomes known (dated from the
    row's creation) and one whenever it changes (dated when the change was seen); the
    ledger splits a machine's billing at them."""

    at: datetime
    per_hour: float


@dataclass(frozen=True, slots=True)
class RunLink:
    """The recovering run a launch belongs to, and which generation it is: written on
    the new row (and on every attempt of its placement) in the launch's own insert."""

    run_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One applied transition, appended in the same transaction as the state change."""

    seq: int
    instance_id: str
    from_state: InstanceState | None  # None for launch, which creates the row
    to_state: InstanceState
    event: Event
    kind: EdgeKind
    actor: str
    version: int
    at: datetime
    reason: str | None = None
    raw_status: str | None = None


@dataclass(frozen=True, slots=True)
class DriftRecord:
    """An observation with no edge from the row's state: kept for audit, never applied."""

    seq: int
    instance_id: str
    state: InstanceState
    event: Event
    actor: str
    at: datetime
    raw_status: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One webhook delivery, pending, delivered or given up (``next_attempt_at`` None)."""

    seq: int
    instance_id: str
    url: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None = None
    last_error: str | None = None


class TrackedInstance(NamedTuple):
    """The slim view of an instance row: what a reconcile pass needs, and no more.

    No spec, health results, error text or lease: the pass decides from state, version,
    provider id and tag, the timestamps its deadlines and grace use, the facts it compares
    with a listing (raw status, ip, price, region), and the persisted evidence about
    absence (when the launch was accepted, listings missing it). Whoever needs the rest
    (the health gate reads the spec) asks the store for the full record. The field names
    are the InstanceRecord's, so code that reads these fields takes either.
    """

    id: str
    provider: str
    state: InstanceState
    version: int
    provider_instance_id: str | None
    tag: str
    name: str | None
    billable: bool
    created_at: datetime
    state_entered_at: datetime
    previous_state: InstanceState | None
    entered_by: Event
    last_raw_status: str | None
    ip: str | None
    price_per_hour: float | None
    accepted_at: datetime | None
    missing_count: int
    region: str | None

    @classmethod
    def of(cls, record: InstanceRecord) -> TrackedInstance:
        """The slim view of a full record."""
        return cls(record.id, record.provider, record.state, record.version,
                   record.provider_instance_id, record.tag, record.name, record.billable,
                   record.created_at, record.state_entered_at, record.previous_state,
                   record.entered_by, record.last_raw_status, record.ip,
                   record.price_per_hour, record.accepted_at, record.missing_count,
                   record.region)


@dataclass(frozen=True, slots=True)
class Move:
    """One transition of a batch: the arguments ``InstanceStore.transition`` takes.

    ``actor`` and the time are the batch's, one for all its moves (one writer, one
    commit). ``outbox`` holds (url, payload) webhook messages committed with the move.
    """

    instance_id: str
    expected_version: int
    from_state: InstanceState
    to_state: InstanceState
    event: Event
    kind: EdgeKind
    reason: str | None = None
    raw_status: str | None = None
    changes: Mapping[str, Any] | None = None
    outbox: Sequence[tuple[str, dict[str, Any]]] = ()

    def written(self, at: datetime) -> dict[str, Any]:
        """The record fields this move sets when applied at ``at`` (enums, not strings).

        The one statement of what a transition writes, shared by ``transition``,
        ``transition_many`` and callers that update what they hold without a re-read:
        state, version + 1, ``updated_at``; the entry time and previous state only when
        the state changes; the event that entered it; the raw status unless ``changes``
        says otherwise; and ``changes`` (checked against MUTABLE_FIELDS).
        """
        values = dict(self.changes or {})
        if unknown := set(values) - MUTABLE_FIELDS:
            raise ValueError(f"not a mutable instance field: {sorted(unknown)}")
        values.update(state=self.to_state, version=self.expected_version + 1, updated_at=at)
        if self.to_state != self.from_state:
            values.update(state_entered_at=at, previous_state=self.from_state)
        values["entered_by"] = self.event
        if self.raw_status is not None:
            values.setdefault("last_raw_status", self.raw_status)
        return values


@dataclass(frozen=True, slots=True)
class DriftNote:
    """An observation with no edge from the row's state, to be kept for audit."""

    event: Event
    raw_status: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RowWrite:
    """Everything one decision writes to one row, committed whole or not at all.

    The row must still be at ``expected_version`` in ``state`` (what the decision was
    made from). Then ``moves`` apply in order (each one's expected version and from-state
    are the previous one's result: a CREATING row found running moves twice), the
    ``drift`` is recorded in the state the moves leave, and the ``facts`` (fields, no
    transition: the version is not bumped) are written last.
    """

    instance_id: str
    expected_version: int
    state: InstanceState
    moves: tuple[Move, ...] = ()
    drift: DriftNote | None = None
    facts: Mapping[str, Any] | None = None

    @property
    def final_version(self) -> int:
        return self.expected_version + len(self.moves)

    @property
    def final_state(self) -> InstanceState:
        return self.moves[-1].to_state if self.moves else self.state

    def check(self) -> None:
        """ValueError unless the moves chain from the row as read, one after another."""
        version, state = self.expected_version, self.state
        for move in self.moves:
            if move.instance_id != self.instance_id or (
                    move.expected_version, move.from_state) != (version, state):
                raise ValueError(f"the moves of {self.instance_id} do not follow each other")
            version, state = version + 1, move.to_state

    @classmethod
    def of(cls, move: Move) -> RowWrite:
        """The write of a single move."""
        return cls(move.instance_id, move.expected_version, move.from_state, (move,))


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a batch did: each applied row's new version, and the rest.

    ``conflicts`` are the ids of rows not written because the row was no longer at the
    expected version and state (or no longer exists): nothing of theirs was written,
    and the caller re-reads them, exactly as after a VersionConflict.
    """

    applied: Mapping[str, int]
    conflicts: tuple[str, ...] = ()


class PlacementState(enum.StrEnum):
    """A request for a GPU: OPEN while offers are tried; PLACED once one instance won;
    FAILED when every attempt failed (a machine of an attempt that turns up after that
    is surplus, and terminated)."""

    OPEN = "OPEN"
    PLACED = "PLACED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class PlacementRecord:
    """One request for a GPU. Its attempts are the instance rows with its id."""

    id: str
    requirements: dict[str, Any]
    template: dict[str, Any]
    state: PlacementState
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    winner_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class BlockedOffer:
    """An offer a provider refused (capacity, quota, price, region), skipped until
    ``until``. ``region`` "" blocks the type in every region."""

    provider: str
    instance_type: str
    region: str
    interruptible: bool
    until: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SurplusRow:
    """A live attempt of a placement, with what decides its fate: the placement's state
    and winner, and whether the provider knows the machine (an id, or adopted)."""

    instance_id: str
    placement_id: str
    placement_state: PlacementState
    winner_id: str | None
    has_provider_id: bool
