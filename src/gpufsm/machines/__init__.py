"""The lifecycle: states, the transition table as data, and the shared machine.

This room knows nothing of HTTP or SQL (an import-linter contract enforces it), so the
rules of the lifecycle can be read, tested and drawn without a provider or a database.
"""

from gpufsm.machines._diagram import to_dot, to_mermaid
from gpufsm.machines._machine import MACHINE, Capabilities, Guard, GuardContext, check
from gpufsm.machines._states import EdgeKind, Event, InstanceState
from gpufsm.machines._table import (
    INITIAL_STATE,
    OBSERVATION_EVENTS,
    TRANSITIONS,
    Transition,
    edges_from,
    event_for_observed_state,
    reachable_by_observation,
    validate_table,
)

__all__ = [
    "INITIAL_STATE",
    "MACHINE",
    "OBSERVATION_EVENTS",
    "TRANSITIONS",
    "Capabilities",
    "EdgeKind",
    "Event",
    "Guard",
    "GuardContext",
    "InstanceState",
    "Transition",
    "check",
    "edges_from",
    "event_for_observed_state",
    "reachable_by_observation",
    "to_dot",
    "to_mermaid",
    "validate_table",
]
