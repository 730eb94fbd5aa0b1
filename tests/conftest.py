"""Shared fixtures. Store-backed tests run on SQLite and, when GPUFSM_TEST_POSTGRES names
a server, on PostgreSQL too — each test in a schema of its own, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from gpufsm.fleet import Fleet
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud

POSTGRES_URL = os.environ.get("GPUFSM_TEST_POSTGRES")
_NO_PG = ("PostgreSQL tests need GPUFSM_TEST_POSTGRES, e.g. "
          "postgresql+psycopg://postgres@127.0.0.1:5432/test (.ci/run sets it)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'gpufsm.db'}"
        return
    yield from _postgres_schema()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema, for what only PostgreSQL can do (several daemons)."""
    yield from _postgres_schema()


def _postgres_schema() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip(_NO_PG)
    schema = f"gpufsm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[SqlInstanceStore]:
    s = SqlInstanceStore(store_url, migrate=True)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(clock: FakeClock) -> SimulatedCloud:
    return SimulatedCloud("sim", clock=clock, seed=1)


@pytest.fixture
def fleet(store: SqlInstanceStore, cloud: SimulatedCloud, clock: FakeClock) -> Fleet:
    return Fleet(store, [cloud], clock=clock, actor="test")


SPEC = {"provider": "sim", "instance_type": "gpu_1x_a10", "name": "job"}
