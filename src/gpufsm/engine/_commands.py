"""Commands on existing rows: start, stop, restart, terminate, and the direct look.

Each one checks the command against the table and guards in memory, commits the
intent (the new state and its history row), then calls the provider outside any
transaction; what the provider says afterwards comes back as an observation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from gpufsm.adapters import Observation, ObservationKind, ProviderAdapter, ProviderInstance
from gpufsm.engine._context import Engine
from gpufsm.engine._observe import observe_one
from gpufsm.errors import PermanentProviderError, ProviderError, TransitionNotAllowed
from gpufsm.machines import Event, InstanceState, check
from gpufsm.store import InstanceRecord

__all__ = ["call_terminate", "clock_event", "command", "confirm", "find_tagged", "look", "refresh",
           "send_terminate", "terminate"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState


def command(engine: Engine, instance_id: str, event: Event,
            call: Callable[[ProviderAdapter, str], None], reason: str | None
            ) -> InstanceRecord:
    """start / stop / restart: intent committed, then the provider call."""
    with engine._lock(instance_id):
        record = engine.store.get(instance_id)
        adapter = engine._adapter(record.provider)
        check(record.id, record.state, event, capabilities=adapter.capabilities,
              guards=engine.guards, instance=record)
        pid = record.provider_instance_id
        if pid is None:
            raise TransitionNotAllowed(record.id, record.state.value, event.value,
                                       "the provider never created it (no provider id)")
        record = engine._apply(record, event, reason=reason, adapter=adapter)
        try:
            call(adapter, pid)
        except PermanentProviderError as exc:
            engine._note_error(record, exc)
            refused = exc
        except Exception as exc:
            engine._note_error(record, exc)
            raise
        else:
            return record
    # Certainly refused (or gone): the provider's own view puts the row right now,
    # without the grace a command that did happen would get.
    confirm(engine, engine.store.get(record.id), adapter, grace=False)
    raise refused


def terminate(engine: Engine, instance_id: str, reason: str | None) -> InstanceRecord:
    """TERMINATING committed, the provider called, then a look (see ``Fleet.terminate``)."""
    with engine._lock(instance_id):
        record = engine.store.get(instance_id)
        if record.state is S.TERMINATED:
            return record
        adapter = engine._adapter(record.provider)
        record = engine._apply(record, Event.TERMINATE, reason=reason, adapter=adapter)
        if record.provider_instance_id is None:
            if not record.billable:
                return engine._apply(record, Event.OBSERVED_GONE,
                                     reason="the launch was refused: nothing was created")
            found = find_tagged(engine, adapter, record.tag)
            if found is None:
                return record  # maybe still being created: the reconciler will see
            record = engine.store.update(
                record.id, expected_version=record.version, at=engine.clock.now(),
                changes={"provider_instance_id": found.provider_instance_id,
                         "accepted_at": record.accepted_at or engine.clock.now()})
        call_terminate(engine, record, adapter)
    return confirm(engine, record, adapter)


def send_terminate(engine: Engine, record: InstanceRecord, adapter: ProviderAdapter
                   ) -> InstanceRecord:
    """The provider call of a terminate already committed (TERMINATING), then a look.

    A failure is recorded on the row and raised: the row stays TERMINATING, and the
    reconciler re-issues the call until the provider confirms the instance is gone.
    """
    call_terminate(engine, record, adapter)
    return confirm(engine, record, adapter)


def call_terminate(engine: Engine, record: InstanceRecord, adapter: ProviderAdapter
                   ) -> None:
    """The provider call of a committed terminate; a failure is noted on the row, raised."""
    assert record.provider_instance_id is not None
    try:
        adapter.terminate(record.provider_instance_id)
    except ProviderError as exc:
        engine._note_error(record, exc)
        raise


def refresh(engine: Engine, instance_id: str, *, grace: bool = True) -> InstanceRecord:
    """Read the provider directly and apply what it says. Errors change nothing.
    ``grace=False``: a "failed" inside the command grace is believed (the caller has
    its own evidence, as a recovering run whose job just lost its machine has)."""
    with engine._lock(instance_id):
        record = engine.store.get(instance_id)
        if record.state is S.TERMINATED:
            return record
        adapter = engine._adapter(record.provider)
        if record.provider_instance_id is not None:
            found = None
        elif not record.billable:
            return record
        else:
            try:
                found = find_tagged(engine, adapter, record.tag, quiet=False)
            except ProviderError:
                return record
            if found is None:
                return record
    if found is None:
        return confirm(engine, record, adapter, grace=grace)
    record = observe_one(engine, record.id, Observation.present(found), engine.actor,
                         grace=grace)
    if record.state is S.TERMINATING and record.provider_instance_id is not None:
        # terminated while the launch was in doubt: the instance turned up after all,
        # so the terminate we could not send then is sent now
        try:
            return send_terminate(engine, record, adapter)
        except ProviderError:
            return engine.store.get(record.id)
    return record


def confirm(engine: Engine, record: InstanceRecord, adapter: ProviderAdapter, *,
            grace: bool = True) -> InstanceRecord:
    """A direct GET, applied as an observation (a failed GET changes nothing)."""
    observation = look(adapter, record)
    if observation.kind is ObservationKind.UNKNOWN:
        return record
    return observe_one(engine, record.id, observation, engine.actor, grace=grace,
                       current=record)


def look(adapter: ProviderAdapter, record: InstanceRecord) -> Observation:
    """A direct GET of the row's instance as an observation. Absent (confirmed) only on
    the adapter's None, which it answers for the provider's own not-found; a failed GET
    is UNKNOWN, which ``decide`` turns into no change."""
    assert record.provider_instance_id is not None
    try:
        seen = adapter.get(record.provider_instance_id)
    except ProviderError as exc:
        log.info("refresh of %s failed (%s): no change", record.id, exc)
        return Observation.unknown(f"confirming GET failed: {exc}")
    if seen is None:
        return Observation.absent(confirmed=True, reason="provider: not found")
    return Observation.present(seen)


def find_tagged(engine: Engine, adapter: ProviderAdapter, tag: str, *, quiet: bool = True
                ) -> ProviderInstance | None:
    """The listed instance carrying ``tag``; a failed listing is None when ``quiet``."""
    try:
        listing = adapter.list_instances()
    except ProviderError as exc:
        if not quiet:
            raise
        log.info("listing %s to find %s failed: %s", adapter.name, tag, exc)
        return None
    for inst in listing:
        if inst.tag == tag:
            return inst
    return None


def clock_event(engine: Engine, instance_id: str, event: Event, reason: str, *,
                changes: Mapping[str, Any] | None = None) -> InstanceRecord:
    """An observation of the clock (a deadline passed: ``timed_out``, ``launch_failed``),
    fired through the machine under the row's lock."""
    with engine._lock(instance_id):
        return engine._apply(engine.store.get(instance_id), event, reason=reason,
                             changes=changes)
