"""Persistence: instances and their append-only history, on SQLite or PostgreSQL.

Imports the lifecycle's types and nothing above; adapters are a sibling it never sees.
"""

from gpufsm.store._engine import gc_paused, make_engine, sqlite_file
from gpufsm.store._migrate import current_revision, head_revision, upgrade
from gpufsm.store._protocol import InstanceRows, InstanceStore, Leases, Outbox, Placements
from gpufsm.store._records import (
    MUTABLE_FIELDS,
    BatchOutcome,
    BlockedOffer,
    DriftNote,
    DriftRecord,
    InstanceRecord,
    Move,
    OutboxMessage,
    PlacementRecord,
    PlacementState,
    PricePoint,
    RowWrite,
    RunLink,
    SurplusRow,
    TrackedInstance,
    TransitionRecord,
)
from gpufsm.store._sql import SqlInstanceStore

__all__ = [
    "MUTABLE_FIELDS",
    "BatchOutcome",
    "BlockedOffer",
    "DriftNote",
    "DriftRecord",
    "InstanceRecord",
    "InstanceRows",
    "InstanceStore",
    "Leases",
    "Move",
    "Outbox",
    "OutboxMessage",
    "PlacementRecord",
    "PlacementState",
    "Placements",
    "PricePoint",
    "RowWrite",
    "RunLink",
    "SqlInstanceStore",
    "SurplusRow",
    "TrackedInstance",
    "TransitionRecord",
    "current_revision",
    "gc_paused",
    "head_revision",
    "make_engine",
    "sqlite_file",
    "upgrade",
]
