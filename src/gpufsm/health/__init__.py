"""The health gate: an instance the provider reports running is RUNNING only once healthy.

"Running" at a provider means the VM or container exists, not that SSH answers or the
model server is up; a scheduler handed such an instance fails its job and the instance
bills anyway. A ``HealthSpec`` names the probes (TCP ports, HTTP endpoints, a local
command); ``run_probes`` runs one round of them in parallel with timeouts and retries;
``gate_verdict`` turns the results and the time since the provider first said running
into PASSED (apply observed_running), PENDING (probe again) or FAILED (the deadline
passed: FAILED, billable, and policy terminates it). No probes: running means RUNNING.

This room imports only ``gpufsm.clock`` and ``gpufsm.errors``; the engine wires it in.
"""

from gpufsm.health._probes import classify, run_probes
from gpufsm.health._result import (
    ERROR_KINDS,
    ErrorKind,
    GateVerdict,
    ProbeResult,
    gate_passed,
    gate_verdict,
)
from gpufsm.health._spec import HealthSpec, HttpCheck, parse_health_spec

__all__ = [
    "ERROR_KINDS",
    "ErrorKind",
    "GateVerdict",
    "HealthSpec",
    "HttpCheck",
    "ProbeResult",
    "classify",
    "gate_passed",
    "gate_verdict",
    "parse_health_spec",
    "run_probes",
]
