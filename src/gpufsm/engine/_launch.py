"""Launch: the CREATING row committed first, then the provider call with our tag.

A permanent refusal leaves the row FAILED and not billable. A temporary error leaves
the outcome unknown: one look for our tag; found, the instance is adopted; not found,
the row stays CREATING (billable, to be safe) for the reconciler.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from gpufsm.adapters import (
    LaunchRequest,
    Observation,
    ProviderAdapter,
    ProviderInstance,
    ownership_tag,
)
from gpufsm.engine._adoption import insert, mark_created
from gpufsm.engine._commands import find_tagged
from gpufsm.engine._context import Engine
from gpufsm.engine._observe import observe_one
from gpufsm.errors import (
    InsufficientCredit,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    TemporaryProviderError,
    VersionConflict,
)
from gpufsm.machines import Event, InstanceState
from gpufsm.specs import InstanceSpec, parse_spec, stored_spec
from gpufsm.store import InstanceRecord, RunLink

__all__ = ["launch"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState


def launch(engine: Engine, spec: InstanceSpec | Mapping[str, Any], reason: str | None, *,
           placement_id: str | None = None, run: RunLink | None = None) -> InstanceRecord:
    """See ``Fleet.launch``; ``placement_id`` marks the row as an attempt of a placement,
    ``run`` as a generation of a recovering run."""
    spec = parse_spec(spec)
    adapter = engine._adapter(spec.provider)
    adapter.validate(spec)
    token = secrets.token_hex(8)
    now = engine.clock.now()
    record = InstanceRecord(
        id=str(uuid.uuid4()), provider=spec.provider, state=S.CREATING, version=1,
        client_token=token, tag=ownership_tag(token), name=spec.name, billable=True,
        spec=stored_spec(spec), created_at=now, updated_at=now,
        state_entered_at=now, region=spec.region, instance_type=spec.instance_type,
        placement_id=placement_id, run_id=run.run_id if run else None,
        generation=run.generation if run else None,
    )
    insert(engine, record, reason)
    with engine._lock(record.id):
        try:
            pid = adapter.launch(LaunchRequest(spec, record.tag, token))
        except ProviderError as exc:
            exc.instance_id = record.id
            if isinstance(exc, InsufficientCredit):
                engine.credit_exhausted.add(record.provider)
            after, found = _launch_failed(engine, adapter, record, exc)
            if found is None:
                raise
        except Exception as exc:
            engine._note_error(record, exc)
            raise
        else:
            return _created(engine, record, pid)
    # the call failed but the instance exists: adopted, and brought to what it reports
    return observe_one(engine, after.id, Observation.present(found), engine.actor)


def _launch_failed(engine: Engine, adapter: ProviderAdapter, record: InstanceRecord,
                   exc: ProviderError) -> tuple[InstanceRecord, ProviderInstance | None]:
    """The row after a failed launch call, and the instance found by tag (adopted)."""
    if _surely_refused(exc):
        return engine._apply(record, Event.LAUNCH_FAILED, reason=str(exc),
                             changes={"billable": False, "last_error": str(exc)}), None
    # Temporary: the outcome is unknown. Look for our tag once.
    record = engine._note_error(record, exc)
    found = find_tagged(engine, adapter, record.tag)
    if found is None:
        return record, None  # stays CREATING and billable; the reconciler decides
    log.info("launch of %s answered %s but the instance exists: adopted", record.id,
             type(exc).__name__)
    return mark_created(engine, record, found), found


def _created(engine: Engine, record: InstanceRecord, pid: str) -> InstanceRecord:
    """Store the provider id; if someone moved the row meanwhile, still keep the id."""
    try:
        return engine._apply(record, Event.OBSERVED_CREATED,
                             changes={"provider_instance_id": pid, "last_error": None,
                                      "accepted_at": engine.clock.now()})
    except VersionConflict:
        current = engine.store.get(record.id)
        current = engine.store.update(current.id, expected_version=current.version,
                                      at=engine.clock.now(),
                                      changes={"provider_instance_id": pid,
                                               "accepted_at": engine.clock.now()})
        if current.state is S.TERMINATING:
            engine._adapter(current.provider).terminate(pid)
        return current


def _surely_refused(exc: ProviderError) -> bool:
    """The launch certainly created nothing: a permanent refusal, a request that never
    left (connection refused), or a 429 (the seam retries launches on 429 for the same
    reason: the provider turned the request away before processing it)."""
    if isinstance(exc, PermanentProviderError | RateLimited):
        return True
    return isinstance(exc, TemporaryProviderError) and exc.not_sent
