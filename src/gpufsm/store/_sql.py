"""SqlInstanceStore: the InstanceStore on SQLite (embedded default) or PostgreSQL.

Writes are single short transactions of Core statements (no ORM unit of work): the state
UPDATE carries ``WHERE version = :expected`` and ``RETURNING`` the new row, and the
history INSERT rides in the same transaction. Provider calls never happen in here; the
engine commits first and calls after.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from gpufsm.errors import InstanceNotFound, StoreError, VersionConflict
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store._migrate import current_revision, head_revision, upgrade
from gpufsm.store._models import DriftRow, InstanceRow, OutboxRow, TransitionRow
from gpufsm.store._records import (
    MUTABLE_FIELDS,
    DriftRecord,
    InstanceRecord,
    OutboxMessage,
    TransitionRecord,
)

__all__ = ["SqlInstanceStore", "make_engine"]

log = logging.getLogger("gpufsm.store")

_I = cast(Table, InstanceRow.__table__)
_T = cast(Table, TransitionRow.__table__)
_D = cast(Table, DriftRow.__table__)
_O = cast(Table, OutboxRow.__table__)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An Engine with the settings gpufsm relies on.

    SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout so two
    threads wait instead of failing, and ``synchronous=FULL`` by default because a lost
    row is a lost machine. The parent folder of a file database is created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool  # one connection, or each would see its own db
    engine = create_engine(url, **kwargs)
    sync = sqlite_synchronous.upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA, not {sync}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    return engine


class SqlInstanceStore:
    """Instances and their history in one SQL database.

    ``migrate``: None (default) applies migrations automatically on SQLite, the embedded
    default, and only checks the schema elsewhere — on a shared PostgreSQL, upgrading is
    an operator's decision (``gpufsm db upgrade``), not a side effect of starting a daemon.
    """

    def __init__(self, url: str | Engine, *, migrate: bool | None = None,
                 sqlite_synchronous: str = "FULL") -> None:
        self.engine = (url if isinstance(url, Engine)
                       else make_engine(url, sqlite_synchronous=sqlite_synchronous))
        self._sqlite = self.engine.dialect.name == "sqlite"
        if migrate is None:
            migrate = self._sqlite
        try:
            if migrate:
                upgrade(self.engine)
            else:
                have, want = current_revision(self.engine), head_revision()
                if have != want:
                    raise StoreError(
                        f"database schema is at {have or 'nothing'}, this gpufsm needs {want}: "
                        "run `gpufsm db upgrade`"
                    )
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.engine.dispose()  # a half-open store must not leak its pool
            raise

    def __repr__(self) -> str:
        return f"SqlInstanceStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

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

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (StoreError, ValueError):
            raise
        except IntegrityError as exc:
            raise StoreError(f"constraint violated: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {type(exc).__name__}: {exc}") from exc

    # ---- writes ----------------------------------------------------------------------

    def insert(self, record: InstanceRecord, *, actor: str, reason: str | None = None,
               outbox: Sequence[tuple[str, dict[str, Any]]] = ()) -> InstanceRecord:
        """Insert a new row in its initial state with its launch history row."""
        _aware(record.created_at, record.updated_at, record.state_entered_at)
        values = _to_row(record)
        with self._tx() as conn:
            conn.execute(insert(_I).values(values))
            conn.execute(insert(_T).values(
                instance_id=record.id, from_state=None, to_state=record.state.value,
                event=Event.LAUNCH.value, kind=EdgeKind.COMMAND.value, actor=actor,
                reason=reason, raw_status=None, version=record.version, at=record.created_at,
            ))
            if outbox:
                conn.execute(insert(_O), [
                    {"instance_id": record.id, "url": url, "payload": payload,
                     "created_at": record.created_at, "attempts": 0,
                     "next_attempt_at": record.created_at} for url, payload in outbox])
        return record

    def transition(
        self,
        instance_id: str,
        *,
        expected_version: int,
        from_state: InstanceState,
        to_state: InstanceState,
        event: Event,
        kind: EdgeKind,
        actor: str,
        at: datetime,
        reason: str | None = None,
        raw_status: str | None = None,
        changes: Mapping[str, Any] | None = None,
        outbox: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> InstanceRecord:
        """Move the row and append history, atomically, if nobody moved it first.

        ``outbox`` holds (url, payload) webhook messages committed in the same
        transaction, so a transition is announced if and only if it happened.
        """
        _aware(at)
        values = _checked(changes)
        values.update(state=to_state.value, version=expected_version + 1, updated_at=at)
        if to_state != from_state:
            values.update(state_entered_at=at, previous_state=from_state.value)
        values["entered_by"] = event.value
        if raw_status is not None:
            values.setdefault("last_raw_status", raw_status)
        with self._tx() as conn:
            row = conn.execute(
                update(_I)
                .where(_I.c.id == instance_id, _I.c.version == expected_version,
                       _I.c.state == from_state.value)
                .values(values)
                .returning(*_I.c)
            ).first()
            if row is None:
                self._raise_missing_or_conflict(conn, instance_id, expected_version)
            conn.execute(insert(_T).values(
                instance_id=instance_id, from_state=from_state.value, to_state=to_state.value,
                event=event.value, kind=kind.value, actor=actor, reason=reason,
                raw_status=raw_status, version=expected_version + 1, at=at,
            ))
            if outbox:
                conn.execute(insert(_O), [
                    {"instance_id": instance_id, "url": url, "payload": payload,
                     "created_at": at, "attempts": 0, "next_attempt_at": at}
                    for url, payload in outbox])
        assert row is not None
        return _from_row(row)

    def update(self, instance_id: str, *, expected_version: int, at: datetime,
               changes: Mapping[str, Any]) -> InstanceRecord:
        """Change facts about the row (ip, raw status …) without a transition.

        The version is checked but not bumped: ``version`` counts transitions, and these
        facts are last-writer-wins reports from the provider, equally true from any writer.
        """
        _aware(at)
        values = _checked(changes)
        values["updated_at"] = at
        with self._tx() as conn:
            row = conn.execute(
                update(_I)
                .where(_I.c.id == instance_id, _I.c.version == expected_version)
                .values(values)
                .returning(*_I.c)
            ).first()
            if row is None:
                self._raise_missing_or_conflict(conn, instance_id, expected_version)
        assert row is not None
        return _from_row(row)

    def record_drift(self, instance_id: str, *, state: InstanceState, event: Event,
                     actor: str, at: datetime, raw_status: str | None = None,
                     reason: str | None = None) -> DriftRecord:
        _aware(at)
        with self._tx() as conn:
            seq = conn.execute(insert(_D).values(
                instance_id=instance_id, state=state.value, event=event.value, actor=actor,
                raw_status=raw_status, reason=reason, at=at,
            ).returning(_D.c.seq)).scalar_one()
        return DriftRecord(seq, instance_id, state, event, actor, at, raw_status, reason)

    @staticmethod
    def _raise_missing_or_conflict(conn: Connection, instance_id: str, expected: int) -> None:
        found = conn.execute(select(_I.c.version).where(_I.c.id == instance_id)).first()
        if found is None:
            raise InstanceNotFound(instance_id)
        raise VersionConflict(instance_id, expected)

    # ---- reads ------------------------------------------------------------------------

    # ---- leases ------------------------------------------------------------------------

    def claim(self, owner: str, instance_ids: Sequence[str], *, now: datetime,
              ttl: float, limit: int | None = None) -> list[InstanceRecord]:
        """Lease the given rows to ``owner`` for ``ttl`` seconds; return those it got.

        A row is claimable when unleased, leased to ``owner`` already (renewal), or its
        lease expired (a dead daemon's rows are taken over). On PostgreSQL the rows are
        locked ``FOR UPDATE SKIP LOCKED``, so daemons claiming at once split the rows
        between them instead of waiting on each other; SQLite has one writer anyway.
        """
        _aware(now)
        if not instance_ids:
            return []
        free = or_(_I.c.lease_owner.is_(None), _I.c.lease_owner == owner,
                   _I.c.lease_expires_at < now)
        pick = select(_I.c.id).where(_I.c.id.in_(list(instance_ids)), free)
        if limit is not None:
            # own leases first (renewal keeps a daemon's rows stable), then the oldest
            pick = pick.order_by((_I.c.lease_owner == owner).desc(), _I.c.created_at,
                                 _I.c.id).limit(limit)
        if not self._sqlite:
            pick = pick.with_for_update(skip_locked=True)
        with self._tx() as conn:
            rows = conn.execute(
                update(_I).where(_I.c.id.in_(pick.scalar_subquery()))
                .values(lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=ttl))
                .returning(*_I.c)
            ).all()
        return [_from_row(r) for r in rows]

    def release(self, owner: str, instance_ids: Sequence[str] | None = None) -> int:
        """Give up ``owner``'s leases (all of them, or these); return how many."""
        query = update(_I).where(_I.c.lease_owner == owner)
        if instance_ids is not None:
            query = query.where(_I.c.id.in_(list(instance_ids)))
        with self._tx() as conn:
            return conn.execute(query.values(lease_owner=None, lease_expires_at=None)).rowcount

    # ---- webhook outbox ------------------------------------------------------------------

    def claim_outbox(self, *, now: datetime, hold: float, limit: int = 100
                     ) -> list[OutboxMessage]:
        """Take due messages for delivery, hiding them from other dispatchers for ``hold``.

        The claim is a write (next attempt pushed ``hold`` seconds out) so two daemons
        never post the same message at once; a dispatcher that dies mid-delivery only
        delays it. Delivery stays at-least-once: receivers dedupe on the idempotency key.
        """
        _aware(now)
        pick = (select(_O.c.seq).where(_O.c.delivered_at.is_(None),
                                       _O.c.next_attempt_at.is_not(None),
                                       _O.c.next_attempt_at <= now)
                .order_by(_O.c.seq).limit(limit))
        if not self._sqlite:
            pick = pick.with_for_update(skip_locked=True)
        with self._tx() as conn:
            rows = conn.execute(
                update(_O).where(_O.c.seq.in_(pick.scalar_subquery()))
                .values(next_attempt_at=now + timedelta(seconds=hold))
                .returning(*_O.c)).all()
        return sorted((_outbox(r) for r in rows), key=lambda m: m.seq)

    def outbox_done(self, seq: int, *, at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(update(_O).where(_O.c.seq == seq).values(
                delivered_at=at, next_attempt_at=None, attempts=_O.c.attempts + 1,
                last_error=None))

    def outbox_failed(self, seq: int, *, error: str, next_attempt_at: datetime | None) -> None:
        """Record a failed attempt; ``next_attempt_at`` None gives up on the message."""
        with self._tx() as conn:
            conn.execute(update(_O).where(_O.c.seq == seq).values(
                attempts=_O.c.attempts + 1, last_error=error[:2000],
                next_attempt_at=next_attempt_at))

    def outbox(self, instance_id: str | None = None) -> list[OutboxMessage]:
        query = select(_O).order_by(_O.c.seq)
        if instance_id is not None:
            query = query.where(_O.c.instance_id == instance_id)
        with self._tx() as conn:
            return [_outbox(r) for r in conn.execute(query)]

    def get(self, instance_id: str) -> InstanceRecord:
        with self._tx() as conn:
            row = conn.execute(select(_I).where(_I.c.id == instance_id)).first()
        if row is None:
            raise InstanceNotFound(instance_id)
        return _from_row(row)

    def find(self, provider: str, *, provider_instance_id: str | None = None,
             tag: str | None = None) -> InstanceRecord | None:
        if (provider_instance_id is None) == (tag is None):
            raise ValueError("find by exactly one of provider_instance_id or tag")
        query = select(_I).where(_I.c.provider == provider)
        if provider_instance_id is not None:
            query = query.where(_I.c.provider_instance_id == provider_instance_id)
        else:
            query = query.where(_I.c.tag == tag)
        with self._tx() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else _from_row(row)

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]:
        query = select(_I).order_by(_I.c.created_at, _I.c.id)
        if provider is not None:
            query = query.where(_I.c.provider == provider)
        if states is not None:
            query = query.where(_I.c.state.in_([s.value for s in states]))
        with self._tx() as conn:
            return [_from_row(r) for r in conn.execute(query)]

    def history(self, instance_id: str) -> Sequence[TransitionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_T).where(_T.c.instance_id == instance_id).order_by(_T.c.seq)
            ).all()
        return [
            TransitionRecord(
                seq=r.seq, instance_id=r.instance_id,
                from_state=None if r.from_state is None else InstanceState(r.from_state),
                to_state=InstanceState(r.to_state), event=Event(r.event),
                kind=EdgeKind(r.kind), actor=r.actor, version=r.version, at=r.at,
                reason=r.reason, raw_status=r.raw_status,
            )
            for r in rows
        ]

    def drift(self, instance_id: str) -> Sequence[DriftRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_D).where(_D.c.instance_id == instance_id).order_by(_D.c.seq)
            ).all()
        return [
            DriftRecord(r.seq, r.instance_id, InstanceState(r.state), Event(r.event), r.actor,
                        r.at, r.raw_status, r.reason)
            for r in rows
        ]


def _aware(*stamps: datetime) -> None:
    for stamp in stamps:
        if stamp.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")


def _checked(changes: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(changes or {})
    if unknown := set(values) - MUTABLE_FIELDS:
        raise ValueError(f"not a mutable instance field: {sorted(unknown)}")
    return values


def _to_row(record: InstanceRecord) -> dict[str, Any]:
    return {
        "id": record.id, "provider": record.provider,
        "provider_instance_id": record.provider_instance_id,
        "client_token": record.client_token, "tag": record.tag, "name": record.name,
        "state": record.state.value,
        "previous_state": None if record.previous_state is None else record.previous_state.value,
        "entered_by": record.entered_by.value, "billable": record.billable, "spec": record.spec,
        "region": record.region, "instance_type": record.instance_type,
        "price_per_hour": record.price_per_hour, "ip": record.ip, "version": record.version,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "state_entered_at": record.state_entered_at, "last_seen_at": record.last_seen_at,
        "last_raw_status": record.last_raw_status, "last_error": record.last_error,
        "health": record.health,
    }


def _from_row(row: Row[Any]) -> InstanceRecord:
    m = row._mapping
    return InstanceRecord(
        id=m["id"], provider=m["provider"], state=InstanceState(m["state"]),
        version=m["version"], client_token=m["client_token"], tag=m["tag"], name=m["name"],
        billable=bool(m["billable"]), spec=m["spec"], created_at=m["created_at"],
        updated_at=m["updated_at"], state_entered_at=m["state_entered_at"],
        provider_instance_id=m["provider_instance_id"], region=m["region"],
        instance_type=m["instance_type"], price_per_hour=m["price_per_hour"], ip=m["ip"],
        last_raw_status=m["last_raw_status"], last_error=m["last_error"],
        last_seen_at=m["last_seen_at"],
        previous_state=None if m["previous_state"] is None else InstanceState(m["previous_state"]),
        entered_by=Event(m["entered_by"]),
        health=m["health"],
    )


def _outbox(row: Row[Any]) -> OutboxMessage:
    m = row._mapping
    return OutboxMessage(
        seq=m["seq"], instance_id=m["instance_id"], url=m["url"], payload=m["payload"],
        created_at=m["created_at"], attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"], delivered_at=m["delivered_at"],
        last_error=m["last_error"],
    )
