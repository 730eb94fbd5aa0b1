"""gpufsm: rented GPU instances driven through an explicit, persisted state machine.

The public API is re-exported here; submodules whose names start with ``_`` are private.
"""

import logging

from gpufsm.adapters import (
    InstanceTypeOffer,
    LaunchRequest,
    Observation,
    ObservationKind,
    ProviderAdapter,
    ProviderInstance,
)
from gpufsm.clock import Clock, SystemClock
from gpufsm.config import Settings
from gpufsm.engine import Recovering, Recovery
from gpufsm.errors import (
    AuthError,
    CircuitOpen,
    DefinitionError,
    GpufsmError,
    InstanceNotFound,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    PermanentProviderError,
    PlacementFailed,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RecoveryExhausted,
    StoreError,
    TemporaryProviderError,
    TransitionNotAllowed,
    ValidationError,
    VersionConflict,
    WaitFailed,
    WaitTimeout,
)
from gpufsm.fleet import Fleet
from gpufsm.machines import (
    TRANSITIONS,
    Capabilities,
    EdgeKind,
    Event,
    Guard,
    GuardContext,
    InstanceState,
    Transition,
)
from gpufsm.placement import Offer, Requirements
from gpufsm.specs import InstanceSpec
from gpufsm.store import InstanceRecord, InstanceStore, SqlInstanceStore, TransitionRecord

__version__ = "0.1.0"

# A library logs; the program that embeds it decides where to. Without a handler here,
# Python's last-resort handler would print gpufsm's warnings (and tracebacks) to the
# stderr of a program that configured no logging (the logging HOWTO's advice for libraries).
logging.getLogger("gpufsm").addHandler(logging.NullHandler())

__all__ = [
    "TRANSITIONS",
    "AuthError",
    "Capabilities",
    "CircuitOpen",
    "Clock",
    "DefinitionError",
    "EdgeKind",
    "Event",
    "Fleet",
    "GpufsmError",
    "Guard",
    "GuardContext",
    "InstanceNotFound",
    "InstanceRecord",
    "InstanceSpec",
    "InstanceState",
    "InstanceStore",
    "InstanceTypeOffer",
    "InsufficientCapacity",
    "InsufficientCredit",
    "InvalidRequest",
    "LaunchRequest",
    "Observation",
    "ObservationKind",
    "Offer",
    "PermanentProviderError",
    "PlacementFailed",
    "ProviderAdapter",
    "ProviderError",
    "ProviderInstance",
    "ProviderNotFound",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "Recovering",
    "Recovery",
    "RecoveryExhausted",
    "Requirements",
    "Settings",
    "SqlInstanceStore",
    "StoreError",
    "SystemClock",
    "TemporaryProviderError",
    "Transition",
    "TransitionNotAllowed",
    "TransitionRecord",
    "ValidationError",
    "VersionConflict",
    "WaitFailed",
    "WaitTimeout",
    "__version__",
]
