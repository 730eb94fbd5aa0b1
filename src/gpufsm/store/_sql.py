"""SqlInstanceStore: the InstanceStore on SQLite (embedded default) or PostgreSQL.

Writes are single short transactions of Core statements (no ORM unit of work): the state
UPDATE carries ``WHERE version = :expected`` and the history INSERT rides in the same
transaction. Provider calls never happen in here; the engine commits first and calls
after. The store is put together from one class per role, each in its own module:

* ``_writes.RowWrites`` and ``_reads.RowReads``: instance rows, history and drift;
* ``_leases.Leases``: which daemon acts on which rows;
* ``_outbox.OutboxQueue``: webhook messages committed with their transitions;
* ``_placements.PlacementTable``: requests for a GPU, their winners, refused offers.
"""

from __future__ import annotations

from gpufsm.store._leases import Leases
from gpufsm.store._outbox import OutboxQueue
from gpufsm.store._placements import PlacementTable
from gpufsm.store._reads import RowReads
from gpufsm.store._writes import RowWrites

__all__ = ["SqlInstanceStore"]


class SqlInstanceStore(RowWrites, RowReads, Leases, OutboxQueue, PlacementTable):
    """Instances, their history, leases, outbox and placements in one SQL database.

    ``migrate``: None (default) applies migrations automatically on SQLite and only
    checks the schema elsewhere (``gpufsm db upgrade`` upgrades a shared PostgreSQL).
    """
