"""Persistence: instances and their append-only history, on SQLite or PostgreSQL.

Imports the lifecycle's types and nothing above; adapters are a sibling it never sees.
"""

from gpufsm.store._migrate import current_revision, head_revision, upgrade
from gpufsm.store._protocol import InstanceStore
from gpufsm.store._records import (
    MUTABLE_FIELDS,
    BatchOutcome,
    DriftRecord,
    InstanceRecord,
    Move,
    OutboxMessage,
    TrackedInstance,
    TransitionRecord,
)
from gpufsm.store._sql import SqlInstanceStore, gc_paused, make_engine, sqlite_file

__all__ = [
    "MUTABLE_FIELDS",
    "BatchOutcome",
    "DriftRecord",
    "InstanceRecord",
    "InstanceStore",
    "Move",
    "OutboxMessage",
    "SqlInstanceStore",
    "TrackedInstance",
    "TransitionRecord",
    "current_revision",
    "gc_paused",
    "head_revision",
    "make_engine",
    "sqlite_file",
    "upgrade",
]
