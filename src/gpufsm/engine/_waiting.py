"""Waiting for a state: poll the provider (through ``refresh``) until the row is there.

Stops early when the target cannot be reached without a command (waiting for RUNNING
from FAILED), so a caller is not kept polling until its timeout for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gpufsm.clock import Clock
from gpufsm.errors import WaitFailed, WaitTimeout
from gpufsm.machines import InstanceState, reachable_by_observation
from gpufsm.store import InstanceRecord

__all__ = ["ProgressCallback", "wait_for"]

#: Called on every poll of wait_for with the freshest record.
ProgressCallback = Callable[[InstanceRecord], None]


def wait_for(refresh: Callable[[str], InstanceRecord], clock: Clock, instance_id: str,
             state: InstanceState | Iterable[InstanceState], *, timeout: float,
             poll_interval: float, on_progress: ProgressCallback | None) -> InstanceRecord:
    """See ``Fleet.wait_for``."""
    targets = frozenset(
        InstanceState(s) for s in ([state] if isinstance(state, str) else state))
    if not targets:
        raise ValueError("wait_for needs at least one target state")
    wanted = "|".join(sorted(targets))
    deadline = clock.monotonic() + timeout
    while True:
        record = refresh(instance_id)
        if on_progress is not None:
            on_progress(record)
        if record.state in targets:
            return record
        if not reachable_by_observation(record.state) & targets:
            raise WaitFailed(instance_id, wanted, record.state.value, record.last_error)
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise WaitTimeout(instance_id, wanted, record.state.value, timeout)
        clock.sleep(min(poll_interval, remaining))
