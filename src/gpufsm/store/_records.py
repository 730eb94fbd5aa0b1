"""Plain, frozen values the store hands out: never live ORM objects.

Frozen dataclasses with slots cost a fraction of an ORM instance and cannot be mutated
behind the store's back, so "what the engine reports" and "what the row says" can only
diverge through a write that went through the version check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from gpufsm.machines import EdgeKind, Event, InstanceState

__all__ = ["MUTABLE_FIELDS", "DriftRecord", "InstanceRecord", "OutboxMessage",
           "TransitionRecord"]

#: Columns a write may change besides state and version. Anything else is a bug.
MUTABLE_FIELDS = frozenset({
    "provider_instance_id", "billable", "ip", "region", "instance_type", "price_per_hour",
    "last_raw_status", "last_error", "name", "last_seen_at", "health",
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

    def with_changes(self, **changes: Any) -> InstanceRecord:
        return replace(self, **changes)


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
