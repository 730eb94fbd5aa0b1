"""New rows: a launch's first row, and instances carrying our tag taken into the store.

An orphan adopted to be terminated goes in as launch → observed_created → terminate in
one transaction (``insert(..., then=...)``), and only then is the provider called:
intent first, so a crash leaves a TERMINATING row, never a live row nobody wants.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from gpufsm.adapters import Observation, ProviderAdapter, ProviderInstance
from gpufsm.engine._commands import send_terminate
from gpufsm.engine._context import Engine
from gpufsm.engine._observe import observe_one
from gpufsm.errors import ProviderError, ValidationError
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.notify import TransitionEvent
from gpufsm.store import InstanceRecord

__all__ = ["adopt", "insert", "mark_created"]

S = InstanceState


def adopt(engine: Engine, provider: str, found: ProviderInstance, *, reason: str,
          terminate: bool, origin: Mapping[str, Any] | None) -> InstanceRecord:
    """See ``Fleet.adopt``."""
    if found.tag is None:
        raise ValidationError("tag", "only instances carrying our ownership tag are adopted")
    adapter = engine._adapter(provider)
    now = engine.clock.now()
    token = found.tag.removeprefix("gpufsm-")
    record = InstanceRecord(
        id=str(uuid.uuid4()), provider=provider, state=S.CREATING, version=1,
        client_token=f"adopted-{token}-{secrets.token_hex(4)}", tag=found.tag,
        name=found.name, billable=True,
        spec={"provider": provider, "adopted": True, **(origin or {})},
        created_at=now, updated_at=now, state_entered_at=now, region=found.region,
        instance_type=found.instance_type, price_per_hour=found.price_per_hour,
        # the id goes in with the row: two daemons adopting one orphan collide on the
        # unique live (provider, provider id) instead of both succeeding
        provider_instance_id=found.provider_instance_id, accepted_at=now,
    )
    if not terminate:
        insert(engine, record, reason)
        with engine._lock(record.id):
            record = mark_created(engine, record, found)
        return observe_one(engine, record.id, Observation.present(found), engine.actor)
    with engine._lock(record.id):
        record = _insert_terminating(engine, record, adapter, found, reason)
        try:
            return send_terminate(engine, record, adapter)
        except ProviderError as exc:
            exc.instance_id = record.id
            raise


def mark_created(engine: Engine, record: InstanceRecord, found: ProviderInstance
                 ) -> InstanceRecord:
    """CREATING → CREATED for an instance found by our tag (its id stored)."""
    return engine._apply(record, Event.OBSERVED_CREATED, reason="found by ownership tag",
                         raw_status=found.raw_status,
                         changes={"provider_instance_id": found.provider_instance_id,
                                  "accepted_at": engine.clock.now()})


def insert(engine: Engine, record: InstanceRecord, reason: str | None) -> None:
    """Write a new row with its launch history row (and its webhook messages)."""
    announced = _announced_launch(engine, record, reason)
    engine.store.insert(record, actor=engine.actor, reason=reason,
                        outbox=engine._announce(announced))
    engine._notify(announced)


def _insert_terminating(engine: Engine, record: InstanceRecord, adapter: ProviderAdapter,
                        found: ProviderInstance, reason: str) -> InstanceRecord:
    """Insert ``record`` (CREATING, id known) and move it to TERMINATING, one commit.

    Each step is checked like any other (the terminate against the guards too), and
    listeners hear of all three once the transaction has committed.
    """
    launched = _announced_launch(engine, record, reason)
    now = engine.clock.now()
    created_move, created = engine._move(
        record, Event.OBSERVED_CREATED, at=now, reason="found by ownership tag",
        raw_status=found.raw_status, adapter=adapter)
    created_row = record.with_changes(**created_move.written(created.at))
    terminate_move, terminating = engine._move(created_row, Event.TERMINATE,
                                               at=engine.clock.now(), reason=reason,
                                               adapter=adapter)
    after = engine.store.insert(record, actor=engine.actor, reason=reason,
                                outbox=engine._announce(launched),
                                then=(created_move, terminate_move))
    for heard in (launched, created, terminating):
        engine._notify(heard)
    return after


def _announced_launch(engine: Engine, record: InstanceRecord, reason: str | None
                      ) -> TransitionEvent:
    return TransitionEvent(
        instance_id=record.id, provider=record.provider,
        provider_instance_id=record.provider_instance_id, name=record.name,
        tag=record.tag, from_state=None, to_state=record.state, event=Event.LAUNCH,
        kind=EdgeKind.COMMAND, actor=engine.actor, version=record.version,
        at=record.created_at, billable=record.billable, reason=reason,
    )
