"""Test without a cloud: a fake clock, a simulated provider, and HTTP emulators.

Public API: users unit-test their own policies and schedulers with these, exactly as
gpufsm tests itself.
"""

from gpufsm.testing._clock import FakeClock
from gpufsm.testing._invariants import check_invariants
from gpufsm.testing._sim import SIM_STATUSES, SimInstance, SimTimings, SimulatedCloud

__all__ = [
    "SIM_STATUSES",
    "FakeClock",
    "SimInstance",
    "SimTimings",
    "SimulatedCloud",
    "check_invariants",
]
