"""Opening a database the way gpufsm relies on: the engine's settings, the SQLite file
behind a URL, and the collector pause used while large lists are built."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

__all__ = ["first_line", "gc_paused", "make_engine", "sqlite_file"]


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



def first_line(exc: SQLAlchemyError) -> str:
    """The driver's own message, first line only: no statement, no parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return (text.strip().splitlines() or [type(exc).__name__])[0][:300]
