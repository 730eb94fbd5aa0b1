"""Sharing rows between daemons: leases on PostgreSQL, one daemon per SQLite file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, case, not_, or_, select, update

from gpufsm.errors import StoreError
from gpufsm.machines import InstanceState
from gpufsm.store import _columns as columns
from gpufsm.store._base import SqlBase
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import TRACKED_SELECT, aware
from gpufsm.store._records import TrackedInstance

__all__ = ["Leases", "watched"]

S = InstanceState


def watched() -> ColumnElement[bool]:
    """The rows a reconciler watches: every row but TERMINATED ones, and but FAILED rows
    that never reached the provider (no id, not billable: nothing to look at)."""
    return and_(
        _I.c.state != S.TERMINATED.value,
        not_(and_(_I.c.state == S.FAILED.value, _I.c.billable.is_(False),
                  _I.c.provider_instance_id.is_(None))))


class Leases(SqlBase):
    """The Leases role: which daemon acts on which rows."""

    @contextmanager
    def daemon_lock(self) -> Iterator[None]:
        """Be the only reconcile daemon on an SQLite file, or say who already is.

        SQLite is the embedded, one-process default: two daemons on one file would both
        act on every row. PostgreSQL needs no lock (daemons share rows by lease), and
        an in-memory database cannot be shared at all.
        """
        database = self.engine.url.database or ""
        if not self._sqlite or database in ("", ":memory:"):
            yield
            return
        path = Path(database).with_name(Path(database).name + ".daemon.lock")
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreError(
                    f"{holder} is already reconciling {database}: SQLite supports one "
                    "daemon; run several on PostgreSQL (they share rows by lease)"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"gpufsm daemon pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def claim(self, owner: str, *, now: datetime, ttl: float, limit: int | None = None
              ) -> list[TrackedInstance]:
        """Lease watched rows (see ``watched``) to ``owner`` for ``ttl`` seconds; return
        those it got, slim, oldest first.

        A row is claimable when unleased, leased to ``owner`` already (renewal), or its
        lease expired (a dead daemon's rows are taken over). ``limit``: at most this
        many, ``owner``'s own leases first (renewal keeps a daemon's rows stable), then
        the oldest. The rows are picked by a query, not by a list of ids, so a fleet of
        any size is one statement. On PostgreSQL they are locked ``FOR UPDATE SKIP
        LOCKED``, so daemons claiming at once split the rows between them instead of
        waiting on each other; SQLite has one writer anyway.
        """
        aware(now)
        free = or_(_I.c.lease_owner.is_(None), _I.c.lease_owner == owner,
                   _I.c.lease_expires_at < now)
        pick = select(_I.c.id).where(watched(), free)
        if limit is not None:
            # CASE, not (owner = x) DESC: that is NULL for unleased rows, and PostgreSQL
            # sorts NULLs first when descending (SQLite last), so they came first there
            mine_first = case((_I.c.lease_owner == owner, 0), else_=1)
            pick = pick.order_by(mine_first, _I.c.created_at, _I.c.id).limit(limit)
        if not self._sqlite:
            pick = pick.with_for_update(skip_locked=True)
        read = columns.tracked_reader(self._sqlite)
        with self._tx() as conn:
            rows = conn.execute(
                update(_I).where(_I.c.id.in_(pick.scalar_subquery()))
                .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=ttl))
                .returning(*TRACKED_SELECT)
            ).all()
        return sorted((read(r) for r in rows), key=lambda r: (r.created_at, r.id))

    def release(self, owner: str, instance_ids: Sequence[str] | None = None) -> int:
        """Give up ``owner``'s leases (all of them, or these); return how many."""
        released = 0
        with self._tx() as conn:
            if instance_ids is None:
                return conn.execute(update(_I).where(_I.c.lease_owner == owner).values(
                    lease_owner=None, lease_expires_at=None)).rowcount
            for chunk in columns.chunks(list(instance_ids), columns.ID_CHUNK):
                released += conn.execute(
                    update(_I).where(_I.c.lease_owner == owner, _I.c.id.in_(chunk))
                    .values(lease_owner=None, lease_expires_at=None)).rowcount
        return released
