"""What every part of the SQL store shares: the engine, its transactions, statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Select, Update, bindparam, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gpufsm.errors import StoreError
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import RECORD_SELECT, record_reader
from gpufsm.store._engine import first_line, make_engine
from gpufsm.store._migrate import current_revision, head_revision, upgrade

__all__ = ["SqlBase"]


class SqlBase:
    """An open database with gpufsm's schema.

    ``migrate``: None (default) applies migrations automatically on SQLite, the embedded
    default, and only checks the schema elsewhere — on a shared PostgreSQL, upgrading is
    an operator's decision (``gpufsm db upgrade``), not a side effect of starting a daemon.
    """

    def __init__(self, url: str | Engine, *, migrate: bool | None = None,
                 sqlite_synchronous: str = "FULL") -> None:
        self.engine = (url if isinstance(url, Engine)
                       else make_engine(url, sqlite_synchronous=sqlite_synchronous))
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._record = record_reader(self._sqlite)
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
            raise StoreError(f"cannot open the database {self._where()}: {first_line(exc)}"
                             ) from exc
        except BaseException:
            self.engine.dispose()  # a half-open store must not leak its pool
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where()!r})"

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (StoreError, ValueError):
            raise
        except IntegrityError as exc:
            raise StoreError(f"constraint violated: {first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            # One line: where and why. SQLAlchemy's own text carries the statement and its
            # parameters (a spec, a tag), which a user can do nothing with.
            raise StoreError(f"database {self._where()}: {first_line(exc)}") from exc

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
                stmt = stmt.returning(*RECORD_SELECT)
            self._updates[key] = stmt
        return stmt
