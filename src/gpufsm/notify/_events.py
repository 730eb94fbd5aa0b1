"""What a transition looks like to someone listening: one flat, JSON-ready event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gpufsm.machines import EdgeKind, Event, InstanceState

__all__ = ["Listener", "TransitionEvent"]


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    """A committed transition: listeners only ever hear about what is in the database."""

    instance_id: str
    provider: str
    provider_instance_id: str | None
    name: str | None
    tag: str
    from_state: InstanceState | None
    to_state: InstanceState
    event: Event
    kind: EdgeKind
    actor: str
    version: int
    at: datetime
    billable: bool
    reason: str | None = None
    raw_status: str | None = None

    def payload(self) -> dict[str, Any]:
        """The webhook body (also what ``gpufsm`` logs): stable keys, ISO times."""
        return {
            "type": "gpufsm.transition",
            "instance_id": self.instance_id,
            "provider": self.provider,
            "provider_instance_id": self.provider_instance_id,
            "name": self.name,
            "tag": self.tag,
            "from": self.from_state.value if self.from_state else None,
            "to": self.to_state.value,
            "event": self.event.value,
            "kind": self.kind.value,
            "actor": self.actor,
            "version": self.version,
            "at": self.at.isoformat(),
            "billable": self.billable,
            "reason": self.reason,
            "raw_status": self.raw_status,
        }


#: An in-process subscriber. Called after the commit; its errors are logged, not raised.
Listener = Callable[[TransitionEvent], None]
