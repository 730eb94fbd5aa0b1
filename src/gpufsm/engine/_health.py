"""The health gate's inputs for ``decide``: the row's spec and one round of probes.

Probes are network I/O, so they never run inside ``decide`` nor under an instance
lock: ``decide`` answers ``needs=PROBES``, the caller runs this, and decides again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pydantic import ValidationError as PydanticValidationError

from gpufsm.adapters import ProviderInstance
from gpufsm.clock import Clock
from gpufsm.engine._decision import Health
from gpufsm.health import HealthSpec, run_probes
from gpufsm.store import InstanceRecord

__all__ = ["gate_health"]

log = logging.getLogger("gpufsm.fleet")


def gate_health(record: InstanceRecord, seen: ProviderInstance | None, clock: Clock
                ) -> Health:
    """The gate's inputs for ``record``, probing ``seen`` when the spec names probes."""
    spec = _health_spec(record)
    if spec is None or spec.is_empty:
        return Health(None)
    gate = record.health or {}
    since = (datetime.fromisoformat(gate["running_since"]) if gate.get("running_since")
             else None)
    if seen is None or seen.ip is None:
        return Health(spec, since, ())
    # the provider may publish SSH on another port than 22 (Vast, RunPod)
    ports = tuple(seen.ssh_port if p == 22 and seen.ssh_port else p for p in spec.tcp_ports)
    results = run_probes(seen.ip, spec.model_copy(update={"tcp_ports": ports}), clock=clock)
    return Health(spec, since, tuple(results))


def _health_spec(record: InstanceRecord) -> HealthSpec | None:
    raw = record.spec.get("health")
    if not raw:
        return None
    try:
        return HealthSpec.model_validate(raw)
    except PydanticValidationError:
        log.warning("instance %s has an unreadable health spec: gate skipped", record.id)
        return None
