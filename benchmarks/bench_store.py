"""Store figures: load 100k rows, and persisted transitions on SQLite and PostgreSQL.

Why the raw baselines look the way they do: each runs the same SQL the store runs
(``UPDATE … WHERE id AND version AND state RETURNING *`` then the history ``INSERT``,
one transaction per transition; or, batched, ``executemany`` of the UPDATE and of the
INSERT, one transaction per batch) on the same schema, built by the store's own
migration, with the same PRAGMAs (WAL, ``synchronous=FULL``, foreign keys on). What is
left between the two numbers is the store's own Python: SQLAlchemy Core, the connection
pool, type processing, building records — and, batched, the read (``FOR NO KEY UPDATE``
on PostgreSQL) that tells ``transition_many`` which moves are still current, which the
raw baseline, trusting its own bookkeeping, skips.

Rows are seeded in bulk through a reflected table rather than ``store.insert`` (100k
single-row transactions with fsync would take minutes); the seed is checked by reading
rows back through the store and comparing them with the records they came from.
"""

from __future__ import annotations

import gc
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import Pair, Workload, paired_rates
from sqlalchemy import Engine, MetaData, create_engine, text
from sqlalchemy.engine import make_url

from gpufsm import InstanceSpec
from gpufsm.machines import TRANSITIONS, EdgeKind, Event, InstanceState
from gpufsm.store import InstanceRecord, Move, SqlInstanceStore

__all__ = [
    "WATCHED",
    "LoadResult",
    "PersistResult",
    "bulk_insert",
    "make_records",
    "postgres_schema",
    "run_load",
    "run_persist_postgres",
    "run_persist_sqlite",
    "seed",
]

S = InstanceState
E = Event
INSTANCES = "gpufsm_instances"
#: What a reconcile pass loads: every state but TERMINATED.
WATCHED = [s for s in InstanceState if s is not InstanceState.TERMINATED]
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

# A loaded fleet is mostly running, with some of everything else that is still live.
_LOAD_MIX = (S.RUNNING,) * 6 + (S.STARTING, S.STOPPED, S.STOPPING, S.FAILED, S.CREATED,
                                S.TERMINATING)

#: The cycle every persisted instance walks; it ends where it began, so it can repeat.
CYCLE: tuple[Event, ...] = (
    E.RESTART, E.STOP, E.OBSERVED_STOPPED, E.START, E.OBSERVED_RUNNING,
)
_MOVE: dict[tuple[InstanceState, Event], tuple[InstanceState, EdgeKind]] = {
    (src, t.event): (t.dest, t.kind) for t in TRANSITIONS for src in t.sources
}

_UPDATE_COLUMNS = ("state", "version", "updated_at", "state_entered_at", "previous_state",
                   "entered_by")
_HISTORY_COLUMNS = ("instance_id", "from_state", "to_state", "event", "kind", "actor",
                    "reason", "raw_status", "version", "at")


def make_records(n: int, *, prefix: str = "", states: Sequence[InstanceState] = _LOAD_MIX
                 ) -> list[InstanceRecord]:
    """``n`` realistic rows: a spec, an ip, a price, timestamps; ids sort by creation.

    The spec is what Fleet.launch stores: ``InstanceSpec.model_dump(mode="json")``, every
    field present, so the memory and load figures pay for what a real row carries.
    """
    spec = InstanceSpec(provider="sim", instance_type="gpu_1x_a10", region="us-east-1",
                        image="pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
                        ssh_key_names=("ops",), disk_gb=100).model_dump(mode="json")
    out = []
    # ids are stable across runs and processes (str hashes are not), distinct per prefix
    space = int.from_bytes(prefix.encode()[:8].ljust(8, b"\0"), "big") << 64
    for i in range(n):
        at = _EPOCH + timedelta(seconds=i)
        state = states[i % len(states)]
        token = f"{prefix}{i:08d}"
        out.append(InstanceRecord(
            id=str(uuid.UUID(int=space | i)),
            provider="sim",
            state=state,
            version=1,
            client_token=token,
            tag=f"gpufsm-{token}",
            name=f"job-{i}",
            billable=True,
            spec={**spec, "name": f"job-{i}"},
            created_at=at,
            updated_at=at,
            state_entered_at=at,
            provider_instance_id=f"{prefix}sim-{i:08d}",
            region="us-east-1",
            instance_type="gpu_1x_a10",
            price_per_hour=0.75,
            ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            last_raw_status="running",
            last_seen_at=at,
            previous_state=S.STARTING,
            entered_by=E.OBSERVED_RUNNING,
        ))
    return out


def _row(record: InstanceRecord, *, sqlite: bool) -> dict[str, Any]:
    def stamp(value: datetime | None) -> datetime | None:
        # the store keeps naive UTC on SQLite (no zone there) and aware elsewhere
        if value is None or not sqlite:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    return {
        "id": record.id, "provider": record.provider,
        "provider_instance_id": record.provider_instance_id,
        "client_token": record.client_token, "tag": record.tag, "name": record.name,
        "state": record.state.value,
        "previous_state": record.previous_state.value if record.previous_state else None,
        "entered_by": record.entered_by.value, "billable": record.billable,
        "spec": record.spec, "region": record.region, "instance_type": record.instance_type,
        # money is stored exactly, in millionths of a dollar (migration 0006)
        "price_micros_per_hour": (None if record.price_per_hour is None
                                  else round(record.price_per_hour * 1_000_000)),
        "ip": record.ip, "version": record.version,
        "created_at": stamp(record.created_at), "updated_at": stamp(record.updated_at),
        "state_entered_at": stamp(record.state_entered_at),
        "last_seen_at": stamp(record.last_seen_at),
        "last_raw_status": record.last_raw_status, "last_error": record.last_error,
        "accepted_at": stamp(record.accepted_at), "missing_since": stamp(record.missing_since),
        "missing_count": record.missing_count,
    }


def bulk_insert(engine: Engine, records: Sequence[InstanceRecord], *, chunk: int = 10_000
                ) -> None:
    """Insert rows in one transaction through the table as the database describes it."""
    meta = MetaData()
    meta.reflect(bind=engine, only=[INSTANCES])
    table = meta.tables[INSTANCES]
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        for i in range(0, len(records), chunk):
            conn.execute(table.insert(), [_row(r, sqlite=sqlite) for r in records[i:i + chunk]])


def seed(store: SqlInstanceStore, records: Sequence[InstanceRecord]) -> None:
    """Seed rows in bulk, then prove the bulk path wrote what ``store.insert`` would."""
    first, rest = records[0], records[1:]
    store.insert(first, actor="bench")
    if rest:
        bulk_insert(store.engine, rest)
    for want in (first, records[-1], records[len(records) // 2]):
        got = store.get(want.id)
        if got != want:
            raise AssertionError(f"seeded row does not read back as written:\n{got}\n{want}")


# ---- load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    rows: int
    cpu_seconds: float  # median CPU time of list_tracked(): what it costs on a free core
    wall_seconds: float  # median wall time, inflated by whatever else the machine runs
    records_cpu_seconds: float  # the same rows as full InstanceRecords (store.list())
    raw_cpu_seconds: float  # SELECT * through sqlite3 fetchall(), for scale
    runs: int


def _timed_load(db: Path, load: Callable[[SqlInstanceStore], Sequence[object]], rows: int
                ) -> tuple[float, float]:
    store = SqlInstanceStore(f"sqlite:///{db}")
    try:
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        got = load(store)
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    finally:
        store.close()
    if len(got) != rows:
        raise AssertionError(f"loaded {len(got)} rows, seeded {rows}")
    return cpu, wall


def run_load(db: Path, *, rows: int, runs: int) -> LoadResult:
    """Time what the engine loads: ``list_tracked`` of every live row, cold-ish.

    A new store is opened for each run so no run reuses the previous run's connection
    state; the file itself is in the OS cache after seeding, as it would be on a host
    that restarts its daemon. The file is read from the page cache, so CPU time is the
    load's cost; wall time is kept to show how much the neighbours added.
    """
    tracked = [_timed_load(db, lambda s: s.list_tracked(states=WATCHED), rows)
               for _ in range(runs)]
    records = [_timed_load(db, lambda s: s.list(), rows)[0] for _ in range(runs)]
    raw: list[float] = []
    for _ in range(runs):
        conn = sqlite3.connect(db)
        try:
            gc.collect()
            start_cpu = time.process_time()
            conn.execute(f"SELECT * FROM {INSTANCES} ORDER BY created_at, id").fetchall()
            raw.append(time.process_time() - start_cpu)
        finally:
            conn.close()
    return LoadResult(rows, statistics.median(c for c, _ in tracked),
                      statistics.median(w for _, w in tracked), statistics.median(records),
                      statistics.median(raw), runs)


# ---- persisted transitions ----------------------------------------------------------------


class _Walker:
    """Per-instance position in CYCLE; ``next()`` says which instance moves and how."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        self.state = [S.RUNNING] * len(ids)
        self.version = [1] * len(ids)
        self.phase = [0] * len(ids)
        self.cursor = 0

    def next(self) -> tuple[int, str, InstanceState, InstanceState, Event, EdgeKind, int]:
        i = self.cursor % len(self.ids)
        self.cursor += 1
        event = CYCLE[self.phase[i]]
        src = self.state[i]
        dest, kind = _MOVE[(src, event)]
        return i, self.ids[i], src, dest, event, kind, self.version[i]

    def moved(self, i: int, dest: InstanceState, version: int) -> None:
        self.state[i] = dest
        self.version[i] = version
        self.phase[i] = (self.phase[i] + 1) % len(CYCLE)


def _store_one_by_one(store: SqlInstanceStore, ids: Sequence[str]) -> Workload:
    walker = _Walker(ids)

    def work(n: int) -> None:
        for _ in range(n):
            i, iid, src, dest, event, kind, ver = walker.next()
            rec = store.transition(Move(iid, ver, src, dest, event, kind), actor="bench",
                                   at=datetime.now(UTC))
            walker.moved(i, rec.state, rec.version)

    return work


def _store_batched(store: SqlInstanceStore, ids: Sequence[str], batch: int) -> Workload:
    """``transition_many`` of ``batch`` moves (distinct instances) per transaction."""
    walker = _Walker(ids)

    def work(n: int) -> None:
        for start in range(0, n, batch):
            size = min(batch, n - start)
            picked = [walker.next() for _ in range(size)]
            outcome = store.transition_many(
                [Move(iid, ver, src, dest, event, kind) for _, iid, src, dest, event, kind, ver
                 in picked], actor="bench", at=datetime.now(UTC))
            if outcome.conflicts:
                raise AssertionError(f"{len(outcome.conflicts)} moves of a batch conflicted")
            for i, iid, _, dest, *_ in picked:
                walker.moved(i, dest, outcome.applied[iid])

    return work


def _update_sql(placeholder: str, *, returning: bool) -> str:
    sets = ", ".join(f"{c} = {placeholder}" for c in _UPDATE_COLUMNS)
    sql = (f"UPDATE {INSTANCES} SET {sets} WHERE id = {placeholder} "
           f"AND version = {placeholder} AND state = {placeholder}")
    return sql + " RETURNING *" if returning else sql


def _history_sql(placeholder: str) -> str:
    cols = ", ".join(_HISTORY_COLUMNS)
    marks = ", ".join([placeholder] * len(_HISTORY_COLUMNS))
    return f"INSERT INTO gpufsm_transitions ({cols}) VALUES ({marks})"


def _params(walker: _Walker, stamp: Callable[[datetime], Any]
            ) -> tuple[int, InstanceState, int, tuple[Any, ...], tuple[Any, ...]]:
    i, iid, src, dest, event, kind, ver = walker.next()
    at = stamp(datetime.now(UTC))
    new = ver + 1
    update = (dest.value, new, at, at, src.value, event.value, iid, ver, src.value)
    history = (iid, src.value, dest.value, event.value, kind.value, "bench", None, None,
               new, at)
    return i, dest, new, update, history


def _sqlite_stamp(at: datetime) -> str:
    # the text SQLAlchemy's SQLite DATETIME writes: naive UTC, microseconds
    return at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_connect(db: Path) -> sqlite3.Connection:
    """A raw connection with the PRAGMAs make_engine sets; transactions by hand."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _raw_sqlite_one_by_one(conn: sqlite3.Connection, ids: Sequence[str]) -> Workload:
    walker = _Walker(ids)
    update, history = _update_sql("?", returning=True), _history_sql("?")

    def work(n: int) -> None:
        cur = conn.cursor()
        for _ in range(n):
            i, dest, new, up, hist = _params(walker, _sqlite_stamp)
            cur.execute("BEGIN")
            if cur.execute(update, up).fetchone() is None:
                raise AssertionError("raw UPDATE matched no row")
            cur.execute(history, hist)
            cur.execute("COMMIT")
            walker.moved(i, dest, new)

    return work


def _raw_sqlite_batched(conn: sqlite3.Connection, ids: Sequence[str], batch: int
                        ) -> Workload:
    walker = _Walker(ids)
    update, history = _update_sql("?", returning=False), _history_sql("?")

    def work(n: int) -> None:
        cur = conn.cursor()
        for start in range(0, n, batch):
            size = min(batch, n - start)
            moves = [_params(walker, _sqlite_stamp) for _ in range(size)]
            cur.execute("BEGIN")
            cur.executemany(update, [m[3] for m in moves])
            if cur.rowcount != size:
                raise AssertionError(f"batched UPDATE moved {cur.rowcount} of {size} rows")
            cur.executemany(history, [m[4] for m in moves])
            cur.execute("COMMIT")
            for i, dest, new, _, _ in moves:
                walker.moved(i, dest, new)

    return work


@dataclass(frozen=True)
class PersistResult:
    one_by_one: Pair
    batched: Pair
    batch: int
    backend: str


def _id_ranges(records: Sequence[InstanceRecord], parts: int) -> list[list[str]]:
    size = len(records) // parts
    return [[r.id for r in records[p * size:(p + 1) * size]] for p in range(parts)]


def run_persist_sqlite(db: Path, *, instances: int, batch: int, seconds: float,
                       rounds: int) -> PersistResult:
    """Four disjoint sets of RUNNING rows in one file, one per contender."""
    store = SqlInstanceStore(f"sqlite:///{db}")
    conn = _sqlite_connect(db)
    try:
        records = make_records(instances * 4, prefix="p", states=(S.RUNNING,))
        seed(store, records)
        a, b, c, d = _id_ranges(records, 4)
        one = paired_rates(_store_one_by_one(store, a), _raw_sqlite_one_by_one(conn, b),
                           seconds=seconds, rounds=rounds)
        many = paired_rates(_store_batched(store, c, batch), _raw_sqlite_batched(conn, d, batch),
                            seconds=seconds, rounds=rounds, step=batch)
        return PersistResult(one, many, batch, "sqlite")
    finally:
        conn.close()
        store.close()


# ---- PostgreSQL --------------------------------------------------------------------------


@contextmanager
def postgres_schema(url: str) -> Iterator[tuple[str, str]]:
    """A fresh schema for this run: yields (SQLAlchemy URL, schema); dropped at the end."""
    schema = f"gpufsm_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in url else "?"
        try:
            yield f"{url}{sep}options=-csearch_path%3D{schema}", schema
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _psycopg_connect(url: str, schema: str) -> Any:
    """A raw psycopg connection to the same server and schema as the store's URL."""
    import psycopg

    parsed = make_url(url)
    conninfo = parsed.set(drivername="postgresql", query={}).render_as_string(
        hide_password=False)
    return psycopg.connect(conninfo, options=f"-csearch_path={schema}", autocommit=False)


def _raw_pg_one_by_one(conn: Any, ids: Sequence[str]) -> Workload:
    walker = _Walker(ids)
    update, history = _update_sql("%s", returning=True), _history_sql("%s")

    def work(n: int) -> None:
        with conn.cursor() as cur:
            for _ in range(n):
                i, dest, new, up, hist = _params(walker, lambda at: at)
                cur.execute(update, up)
                if cur.fetchone() is None:
                    raise AssertionError("raw UPDATE matched no row")
                cur.execute(history, hist)
                conn.commit()
                walker.moved(i, dest, new)

    return work


def _raw_pg_batched(conn: Any, ids: Sequence[str], batch: int) -> Workload:
    walker = _Walker(ids)
    update, history = _update_sql("%s", returning=False), _history_sql("%s")

    def work(n: int) -> None:
        with conn.cursor() as cur:
            for start in range(0, n, batch):
                size = min(batch, n - start)
                moves = [_params(walker, lambda at: at) for _ in range(size)]
                cur.executemany(update, [m[3] for m in moves])
                if cur.rowcount != size:
                    raise AssertionError(f"batched UPDATE moved {cur.rowcount} of {size}")
                cur.executemany(history, [m[4] for m in moves])
                conn.commit()
                for i, dest, new, _, _ in moves:
                    walker.moved(i, dest, new)

    return work


def run_persist_postgres(url: str, *, instances: int, batch: int, seconds: float,
                         rounds: int) -> PersistResult:
    with postgres_schema(url) as (store_url, schema):
        store = SqlInstanceStore(store_url, migrate=True)
        conn = _psycopg_connect(url, schema)
        try:
            records = make_records(instances * 4, prefix="q", states=(S.RUNNING,))
            seed(store, records)
            a, b, c, d = _id_ranges(records, 4)
            one = paired_rates(_store_one_by_one(store, a), _raw_pg_one_by_one(conn, b),
                               seconds=seconds, rounds=rounds)
            many = paired_rates(_store_batched(store, c, batch), _raw_pg_batched(conn, d, batch),
                                seconds=seconds, rounds=rounds, step=batch)
            return PersistResult(one, many, batch, "postgresql")
        finally:
            conn.close()
            store.close()
