"""SqlInstanceStore: the InstanceStore on SQLite (embedded default) or PostgreSQL.

Writes are single short transactions of Core statements (no ORM unit of work): the state
UPDATE carries ``WHERE version = :expected`` and ``RETURNING`` the new row, and the
history INSERT rides in the same transaction. Provider calls never happen in here; the
engine commits first and calls after.

A reconcile pass over a large fleet needs two more things, both here:

* **batched writes** — ``transition_many`` applies many moves in one transaction with
  one ``executemany`` per statement shape, and reports the moves whose row moved on
  (conflicts) instead of raising, so one stale row does not cost the others a commit;
* **cheap reads** — rows are read as raw driver values in a fixed column order and
  turned into records by one closure per store (no per-column type objects, no
  mapping look-ups), statements are built once, and ``list_tracked`` reads only what a
  pass needs. See ``_GcPause`` for why the collector is paused while lists are built.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    create_engine,
    event,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from gpufsm.errors import InstanceNotFound, StoreError, VersionConflict
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store._migrate import current_revision, head_revision, upgrade
from gpufsm.store._models import DriftRow, InstanceRow, OutboxRow, TransitionRow
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

__all__ = ["SqlInstanceStore", "gc_paused", "make_engine", "sqlite_file"]

log = logging.getLogger("gpufsm.store")

_I = cast(Table, InstanceRow.__table__)
_T = cast(Table, TransitionRow.__table__)
_D = cast(Table, DriftRow.__table__)
_O = cast(Table, OutboxRow.__table__)

#: InstanceRecord's fields in declaration order: the order rows are selected in, so a row
#: becomes a record by position.
_RECORD_COLUMNS: tuple[str, ...] = tuple(InstanceRecord.__dataclass_fields__)
_TRACKED_COLUMNS: tuple[str, ...] = TrackedInstance._fields
#: One SELECT chunk of ids: well under SQLite's and PostgreSQL's bound-parameter limits.
_ID_CHUNK = 1000
#: How often transition_many re-runs a batch a concurrent writer slipped into (SQLite
#: reads before it takes the write lock) before it falls back to one move at a time.
_BATCH_ATTEMPTS = 3


#: Record fields stored under another column name, in another unit (see ``_micros``).
_COLUMN_OF = {"price_per_hour": "price_micros_per_hour"}
_MICROS = 1_000_000


def _micros(price: float | None) -> int | None:
    """Dollars per hour → integer millionths: money is stored exactly (no 0.35000000000000003).

    Providers quote at most cents of a cent, so a millionth of a dollar loses nothing.
    """
    return None if price is None else round(price * _MICROS)


def _dollars(micros: int | None) -> float | None:
    """The stored millionths → the float nearest to the exact price (350000 → 0.35)."""
    return None if micros is None else micros / _MICROS


def _raw(names: Iterable[str]) -> list[ColumnElement[Any]]:
    """The columns as the driver returns them: no SQLAlchemy result processing.

    The record readers below convert each value themselves, once, in one closure: the
    per-value type processors (and the UtcDateTime decorator) were most of list()'s time.
    """
    return [type_coerce(_I.c[_COLUMN_OF.get(name, name)], NullType()).label(name)
            for name in names]


_RECORD_SELECT = _raw(_RECORD_COLUMNS)
_TRACKED_SELECT = _raw(_TRACKED_COLUMNS)
_STATES: dict[str, InstanceState] = {s.value: s for s in InstanceState}
_EVENTS: dict[str, Event] = {e.value: e for e in Event}
_V = TypeVar("_V")


def _state(value: str) -> InstanceState:
    return _STATES.get(value) or InstanceState(value)  # the enum names a bad value


def _state_or_none(value: str | None) -> InstanceState | None:
    return None if value is None else _state(value)


def _event(value: str) -> Event:
    return _EVENTS.get(value) or Event(value)


def _json_value(value: Any) -> Any:
    # SQLite hands back the JSON text; psycopg has decoded it already
    return json.loads(value) if isinstance(value, str | bytes) else value


def _sqlite_stamp(value: str | datetime | None) -> datetime | None:
    """SQLite keeps naive UTC text ("2026-01-01 00:00:00.000000"): the zone goes back on."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _aware_stamp(value: datetime | None) -> datetime | None:
    """What UtcDateTime.process_result_value does, for drivers that return datetimes."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record_reader(sqlite: bool) -> Callable[[Sequence[Any]], InstanceRecord]:
    """Raw row (``_RECORD_COLUMNS`` order) → InstanceRecord, for one backend.

    A closure over local names rather than a method with look-ups: on 100k rows every
    attribute access shows.
    """
    stamp = _sqlite_stamp if sqlite else _aware_stamp
    state, state_or_none, event_of, as_json = _state, _state_or_none, _event, _json_value
    dollars = _dollars

    def record(v: Sequence[Any]) -> InstanceRecord:
        return InstanceRecord(
            v[0], v[1], state(v[2]), v[3], v[4], v[5], v[6], bool(v[7]), as_json(v[8]),
            cast(datetime, stamp(v[9])), cast(datetime, stamp(v[10])),
            cast(datetime, stamp(v[11])), v[12], v[13], v[14], dollars(v[15]), v[16],
            v[17], v[18], stamp(v[19]), state_or_none(v[20]), event_of(v[21]),
            as_json(v[22]), stamp(v[23]), stamp(v[24]), v[25] or 0,
        )

    return record


def _tracked_reader(sqlite: bool) -> Callable[[Sequence[Any]], TrackedInstance]:
    """Raw row (``_TRACKED_COLUMNS`` order) → TrackedInstance; make one per list.

    Values that repeat across a fleet (provider names, raw statuses, prices) are shared
    through a dict that lives as long as the reader, which saves ~100 bytes per row.
    """
    stamp = _sqlite_stamp if sqlite else _aware_stamp
    common: dict[Any, Any] = {}
    share = common.setdefault
    states, events, state, event_of = _STATES, _EVENTS, _state, _event
    tuple_new = tuple.__new__
    tracked_cls = TrackedInstance

    def tracked(v: Sequence[Any]) -> TrackedInstance:
        prev, raw, price, accepted = v[10], v[12], v[14], v[15]
        # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python call
        return tuple_new(tracked_cls, (
            v[0], share(v[1], v[1]), states.get(v[2]) or state(v[2]), v[3], v[4], v[5],
            v[6], bool(v[7]), stamp(v[8]), stamp(v[9]),
            None if prev is None else (states.get(prev) or state(prev)),
            events.get(v[11]) or event_of(v[11]),
            None if raw is None else share(raw, raw), v[13],
            None if price is None else share(price, price / 1_000_000),
            None if accepted is None else stamp(accepted), v[16] or 0,
            None if v[17] is None else share(v[17], v[17]),
        ))

    return tracked


class _GcPause:
    """Pause the cyclic garbage collector while large structures of plain values are built.

    Why: building an entry per instance for 100k instances (records, a listing, the
    observations of a pass) allocates a million objects, and CPython runs a collection
    every 700 net container allocations; its full collections re-walk every object alive,
    ~0.2 s each at that size, and a 100k-row list or pass triggered several. Nothing
    built there forms a reference cycle, so pausing frees nothing late; cyclic garbage
    made meanwhile waits until the collector resumes. Nestable and thread-safe: the last
    one out turns the collector back on, and only if it was on when the first came in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._resume:
                    gc.enable()


#: ``with gc_paused(): ...`` — see _GcPause. Used by the store while it builds lists of
#: records, and by the reconciler for a pass's per-instance structures.
gc_paused = _GcPause()
_gc_paused = gc_paused  # the store's own uses go through this name (patchable in profiles)


def _chunks(items: Sequence[_V], size: int) -> Iterator[Sequence[_V]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, ``~`` expanded; None for an in-memory database or
    another backend. A URI-form name (``file:/p/x.db?mode=ro`` with ``uri=true``) names
    /p/x.db. The one reading of a SQLite URL: the engine makes this file's folder, and
    the CLI refuses to read a database whose file is not there."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or database.startswith("file::memory:"):
        return None
    if parsed.query.get("uri"):
        database = database.removeprefix("file:")
    return Path(database).expanduser().absolute()


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An Engine with the settings gpufsm relies on.

    SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout so two
    threads wait instead of failing, and ``synchronous=FULL`` by default because a lost
    row is a lost machine. The parent folder of a file database is created.
    """
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    path = sqlite_file(url)
    memory = path is None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        self._record = _record_reader(self._sqlite)
        # Statements are built once per shape and reused: building a Core construct costs
        # more than executing a cached compiled one.
        self._updates: dict[tuple[frozenset[str], bool, bool], Update] = {}
        self._lists: dict[tuple[bool, bool, bool], Select[Any]] = {}
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
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreError(f"cannot open the database {where}: {_first_line(exc)}") from exc
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
            raise StoreError(f"constraint violated: {_first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            # One line: where and why. SQLAlchemy's own text carries the statement and its
            # parameters (a spec, a tag), which a user can do nothing with.
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreError(f"database {where}: {_first_line(exc)}") from exc

    # ---- writes ----------------------------------------------------------------------

    def insert(self, record: InstanceRecord, *, actor: str, reason: str | None = None,
               outbox: Sequence[tuple[str, dict[str, Any]]] = (),
               then: Sequence[Move] = ()) -> InstanceRecord:
        """Insert a new row in its initial state with its launch history row.

        ``then``: moves applied to the new row in the same transaction, each with its
        history row (and outbox messages), in order. An instance adopted to be
        terminated goes in as launch → observed_created → terminate at once: a crash can
        leave it TERMINATING or absent, never as a live row nobody means to terminate.
        Returns the row after the last move.
        """
        _aware(record.created_at, record.updated_at, record.state_entered_at)
        values = _to_row(record)
        at = record.created_at
        with self._tx() as conn:
            conn.execute(insert(_I).values(values))
            conn.execute(insert(_T).values(
                instance_id=record.id, from_state=None, to_state=record.state.value,
                event=Event.LAUNCH.value, kind=EdgeKind.COMMAND.value, actor=actor,
                reason=reason, raw_status=None, version=record.version, at=at,
            ))
            if outbox:
                conn.execute(insert(_O), [
                    {"instance_id": record.id, "url": url, "payload": payload,
                     "created_at": at, "attempts": 0, "next_attempt_at": at}
                    for url, payload in outbox])
            row: Row[Any] | None = None
            for move in then:
                if move.instance_id != record.id:
                    raise ValueError("insert(then=...) moves the inserted row only")
                moved = _columns(move.written(at))
                row = conn.execute(
                    self._update_stmt(frozenset(moved), checks_state=True, returning=True),
                    _update_params(move, moved)).first()
                if row is None:
                    raise VersionConflict(record.id, move.expected_version)
                conn.execute(insert(_T), _history_row(move, actor, at))
                if move.outbox:
                    conn.execute(insert(_O), _outbox_rows(move, at))
        return record if row is None else self._record(row)

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
        move = Move(instance_id, expected_version, from_state, to_state, event, kind,
                    reason, raw_status, changes, outbox)
        values = _columns(move.written(at))
        with self._tx() as conn:
            row = conn.execute(
                self._update_stmt(frozenset(values), checks_state=True, returning=True),
                _update_params(move, values)).first()
            if row is None:
                self._raise_missing_or_conflict(conn, instance_id, expected_version)
            conn.execute(insert(_T), _history_row(move, actor, at))
            if outbox:
                conn.execute(insert(_O), _outbox_rows(move, at))
        assert row is not None
        return self._record(row)

    def transition_many(self, moves: Sequence[Move], *, actor: str, at: datetime
                        ) -> BatchOutcome:
        """Apply many moves in one transaction; report the stale ones instead of raising.

        Each move is what ``transition`` would write (state UPDATE checked on version
        and state, one history row, its outbox messages) and is applied whole or not at
        all: a move whose row is no longer at ``expected_version`` and ``from_state``
        (or no longer exists) writes nothing and is listed in ``conflicts``, and the
        others still commit. On PostgreSQL the rows are locked first (in id order, so
        two batches cannot deadlock); SQLite has a single writer, and a writer that
        slips in between this batch's read and its update only makes it run again.

        One move per instance: two moves of one row in one batch would make the second
        depend on the first, which is what separate calls are for. A database error
        raises StoreError and writes nothing.
        """
        _aware(at)
        if not moves:
            return BatchOutcome({})
        ids = [m.instance_id for m in moves]
        if len(set(ids)) != len(ids):
            raise ValueError("transition_many takes at most one move per instance")
        values = [_columns(m.written(at)) for m in moves]  # every move checked up front
        for _ in range(_BATCH_ATTEMPTS):
            try:
                return self._transition_batch(moves, values, actor, at)
            except _Raced:
                log.info("a concurrent writer moved rows of a batch of %d: running it again",
                         len(moves))
        return self._transition_one_by_one(moves, actor, at)

    def _transition_batch(self, moves: Sequence[Move], values: Sequence[dict[str, Any]],
                          actor: str, at: datetime) -> BatchOutcome:
        with self._tx() as conn:
            current = self._positions(conn, [m.instance_id for m in moves])
            go = [i for i, m in enumerate(moves)
                  if current.get(m.instance_id) == (m.expected_version, m.from_state.value)]
            groups: dict[frozenset[str], list[dict[str, Any]]] = {}
            for i in go:
                groups.setdefault(frozenset(values[i]), []).append(
                    _update_params(moves[i], values[i]))
            for columns, params in groups.items():
                stmt = self._update_stmt(columns, checks_state=True, returning=False)
                if conn.execute(stmt, params).rowcount != len(params):
                    raise _Raced  # rolls the whole batch back
            if go:
                conn.execute(insert(_T), [_history_row(moves[i], actor, at) for i in go])
                mail = [row for i in go for row in _outbox_rows(moves[i], at)]
                if mail:
                    conn.execute(insert(_O), mail)
        taken = set(go)
        return BatchOutcome(
            {moves[i].instance_id: moves[i].expected_version + 1 for i in go},
            tuple(m.instance_id for i, m in enumerate(moves) if i not in taken))

    def _positions(self, conn: Connection, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """id → (version, state) of these rows; locked on PostgreSQL, in id order."""
        found: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(sorted(ids), _ID_CHUNK):
            query = select(_I.c.id, _I.c.version, _I.c.state).where(_I.c.id.in_(chunk))
            if not self._sqlite:
                # NO KEY UPDATE: the lock the UPDATE itself takes (the key never changes),
                # so history inserts elsewhere that reference these rows are not blocked
                query = query.order_by(_I.c.id).with_for_update(key_share=True)
            found.update((r[0], (r[1], r[2])) for r in conn.execute(query))
        return found

    def _transition_one_by_one(self, moves: Sequence[Move], actor: str, at: datetime
                               ) -> BatchOutcome:
        """The last resort when batches keep racing: each move in its own transaction."""
        applied: dict[str, int] = {}
        conflicts: list[str] = []
        for m in moves:
            try:
                after = self.transition(
                    m.instance_id, expected_version=m.expected_version,
                    from_state=m.from_state, to_state=m.to_state, event=m.event,
                    kind=m.kind, actor=actor, at=at, reason=m.reason,
                    raw_status=m.raw_status, changes=m.changes, outbox=m.outbox)
            except (VersionConflict, InstanceNotFound):
                conflicts.append(m.instance_id)
            else:
                applied[m.instance_id] = after.version
        return BatchOutcome(applied, tuple(conflicts))

    def update(self, instance_id: str, *, expected_version: int, at: datetime,
               changes: Mapping[str, Any]) -> InstanceRecord:
        """Change facts about the row (ip, raw status …) without a transition.

        The version is checked but not bumped: ``version`` counts transitions, and these
        facts are last-writer-wins reports from the provider, equally true from any writer.
        """
        _aware(at)
        values = _columns(_checked(changes))
        values["updated_at"] = at
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(w_id=instance_id, w_version=expected_version)
        with self._tx() as conn:
            row = conn.execute(
                self._update_stmt(frozenset(values), checks_state=False, returning=True),
                params).first()
            if row is None:
                self._raise_missing_or_conflict(conn, instance_id, expected_version)
        assert row is not None
        return self._record(row)

    def _update_stmt(self, columns: frozenset[str], *, checks_state: bool, returning: bool
                     ) -> Update:
        """``UPDATE … SET <columns> WHERE id AND version [AND state]``, built once per shape.

        New values bind as ``v_<column>``, the checks as ``w_id``, ``w_version`` and
        ``w_state``, so one statement serves ``execute`` and ``executemany`` alike.
        """
        key = (columns, checks_state, returning)
        stmt = self._updates.get(key)
        if stmt is None:
            checks = [_I.c.id == bindparam("w_id"), _I.c.version == bindparam("w_version")]
            if checks_state:
                checks.append(_I.c.state == bindparam("w_state"))
            stmt = update(_I).where(*checks).values(
                {name: bindparam(f"v_{name}", type_=_I.c[name].type)
                 for name in sorted(columns)})
            if returning:
                stmt = stmt.returning(*_RECORD_SELECT)
            self._updates[key] = stmt
        return stmt

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
                .returning(*_RECORD_SELECT)
            ).all()
        return [self._record(r) for r in rows]

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
            row = conn.execute(select(*_RECORD_SELECT).where(_I.c.id == instance_id)).first()
        if row is None:
            raise InstanceNotFound(instance_id)
        return self._record(row)

    def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        """``get`` of many rows in one query per thousand ids (a pass whose slim rows
        cannot decide reads the full records of those rows at once). Ids with no row are
        left out, not raised."""
        wanted = sorted(set(instance_ids))
        found: dict[str, InstanceRecord] = {}
        with self._tx() as conn:
            for chunk in _chunks(wanted, _ID_CHUNK):
                for r in conn.execute(select(*_RECORD_SELECT).where(_I.c.id.in_(chunk))):
                    record = self._record(r)
                    found[record.id] = record
        return found

    def find(self, provider: str, *, provider_instance_id: str | None = None,
             tag: str | None = None) -> InstanceRecord | None:
        if (provider_instance_id is None) == (tag is None):
            raise ValueError("find by exactly one of provider_instance_id or tag")
        query = select(*_RECORD_SELECT).where(_I.c.provider == provider)
        if provider_instance_id is not None:
            query = query.where(_I.c.provider_instance_id == provider_instance_id)
        else:
            query = query.where(_I.c.tag == tag)
        # A live row first: after a wrong "gone", an instance has its TERMINATED row and
        # the live row that adopted it when it turned up again (the newest of those).
        query = query.order_by(_I.c.state == InstanceState.TERMINATED.value,
                               _I.c.created_at.desc(), _I.c.id)
        with self._tx() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else self._record(row)

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]:
        """Every row (or a provider's, or those in ``states``), oldest first."""
        return self._listed(self._record, False, provider, states)

    def list_tracked(self, *, provider: str | None = None,
                     states: Iterable[InstanceState] | None = None
                     ) -> Sequence[TrackedInstance]:
        """What ``list`` returns, as the slim TrackedInstance view: what a pass holds.

        Same rows, same order; no spec, health, error text or update times, so 100k
        rows load in a fraction of the time and memory of 100k InstanceRecords.
        """
        return self._listed(_tracked_reader(self._sqlite), True, provider, states)

    def find_tracked(self, provider: str, *, tags: Iterable[str] = (),
                     provider_instance_ids: Iterable[str] = ()) -> Sequence[TrackedInstance]:
        """The rows of ``provider`` carrying any of these tags or provider ids, slim.

        ``find`` for many at once (a reconcile pass matching a whole listing against its
        rows): one query per thousand values instead of one per value. Any state, oldest
        first; a row matching both a tag and an id comes once.
        """
        read = _tracked_reader(self._sqlite)
        found: dict[str, TrackedInstance] = {}
        with self._tx() as conn:
            for column, values in ((_I.c.tag, sorted(set(tags))),
                                   (_I.c.provider_instance_id, sorted(set(provider_instance_ids)))):
                for chunk in _chunks(values, _ID_CHUNK):
                    query = select(*_TRACKED_SELECT).where(_I.c.provider == provider,
                                                           column.in_(chunk))
                    for row in conn.execute(query):
                        found.setdefault(row[0], read(row))
        return sorted(found.values(), key=lambda r: (r.created_at, r.id))

    def _listed(self, read: Callable[[Sequence[Any]], _V], tracked: bool,
                provider: str | None, states: Iterable[InstanceState] | None) -> Sequence[_V]:
        params: dict[str, Any] = {}
        if provider is not None:
            params["provider"] = provider
        if states is not None:
            params["states"] = [InstanceState(s).value for s in states]
            if not params["states"]:
                return []
        key = (tracked, provider is not None, states is not None)
        query = self._lists.get(key)
        if query is None:
            query = select(*(_TRACKED_SELECT if tracked else _RECORD_SELECT)).order_by(
                _I.c.created_at, _I.c.id)
            if provider is not None:
                query = query.where(_I.c.provider == bindparam("provider"))
            if states is not None:
                query = query.where(_I.c.state.in_(bindparam("states", expanding=True)))
            self._lists[key] = query
        with self._tx() as conn, _gc_paused():
            return [read(r) for r in conn.execute(query, params)]

    def history(self, instance_id: str) -> Sequence[TransitionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_T).where(_T.c.instance_id == instance_id).order_by(_T.c.seq)
            ).all()
        return [_transition(r) for r in rows]

    def history_many(self, instance_ids: Iterable[str]
                     ) -> dict[str, Sequence[TransitionRecord]]:
        """``history`` of many rows in one query per thousand ids (a reconcile pass reads
        the terminate attempts of every TERMINATING row at once). Every id asked for is
        a key; a row with no history (or no row) maps to an empty list."""
        wanted = sorted(set(instance_ids))
        found: dict[str, Any] = {i: [] for i in wanted}
        with self._tx() as conn:
            for chunk in _chunks(wanted, _ID_CHUNK):
                rows = conn.execute(
                    select(_T).where(_T.c.instance_id.in_(chunk)).order_by(_T.c.seq)).all()
                for r in rows:
                    found[r.instance_id].append(_transition(r))
        return found

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


def _transition(r: Row[Any]) -> TransitionRecord:
    return TransitionRecord(
        seq=r.seq, instance_id=r.instance_id,
        from_state=None if r.from_state is None else InstanceState(r.from_state),
        to_state=InstanceState(r.to_state), event=Event(r.event),
        kind=EdgeKind(r.kind), actor=r.actor, version=r.version, at=r.at,
        reason=r.reason, raw_status=r.raw_status,
    )


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's own message, first line only: no statement, no parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]


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
        "price_micros_per_hour": _micros(record.price_per_hour), "ip": record.ip,
        "version": record.version, "accepted_at": record.accepted_at,
        "missing_since": record.missing_since, "missing_count": record.missing_count,
        "created_at": record.created_at, "updated_at": record.updated_at,
        "state_entered_at": record.state_entered_at, "last_seen_at": record.last_seen_at,
        "last_raw_status": record.last_raw_status, "last_error": record.last_error,
        "health": record.health,
    }


class _Raced(Exception):
    """A batch's UPDATE matched fewer rows than its read promised: run it again."""


_ENUM_COLUMNS = ("state", "previous_state", "entered_by")


def _columns(written: dict[str, Any]) -> dict[str, Any]:
    """Record fields → column values, in place: enums to their strings, the price to its
    exact column (millionths of a dollar)."""
    for name in _ENUM_COLUMNS:
        value = written.get(name)
        if value is not None:
            written[name] = value.value
    if "price_per_hour" in written:
        written["price_micros_per_hour"] = _micros(written.pop("price_per_hour"))
    return written


def _update_params(move: Move, values: Mapping[str, Any]) -> dict[str, Any]:
    params = {f"v_{k}": v for k, v in values.items()}
    params.update(w_id=move.instance_id, w_version=move.expected_version,
                  w_state=move.from_state.value)
    return params


def _history_row(move: Move, actor: str, at: datetime) -> dict[str, Any]:
    return {"instance_id": move.instance_id, "from_state": move.from_state.value,
            "to_state": move.to_state.value, "event": move.event.value,
            "kind": move.kind.value, "actor": actor, "reason": move.reason,
            "raw_status": move.raw_status, "version": move.expected_version + 1, "at": at}


def _outbox_rows(move: Move, at: datetime) -> list[dict[str, Any]]:
    return [{"instance_id": move.instance_id, "url": url, "payload": payload,
             "created_at": at, "attempts": 0, "next_attempt_at": at}
            for url, payload in move.outbox]


def _outbox(row: Row[Any]) -> OutboxMessage:
    m = row._mapping
    return OutboxMessage(
        seq=m["seq"], instance_id=m["instance_id"], url=m["url"], payload=m["payload"],
        created_at=m["created_at"], attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"], delivered_at=m["delivered_at"],
        last_error=m["last_error"],
    )
