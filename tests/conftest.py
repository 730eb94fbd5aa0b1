"""Shared fixtures. Store-backed tests run on SQLite and, when GPUFSM_TEST_POSTGRES names
a server, on PostgreSQL too — each test in a schema of its own, dropped afterwards.

Tests that need a service this machine may lack (PostgreSQL, a local sshd) are skipped
here, in one hook, rather than in their fixtures: pytest reports a skip raised in a
fixture at each test's own line, so ``pytest -ra`` printed one SKIPPED line per test
(about 150), while skips raised from one place fold into one line per cause, with a count.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gpufsm.fleet import Fleet
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud

#: The compatibility suite runs in its own virtualenvs (tests/compat/run), not here.
collect_ignore = ["compat"]

POSTGRES_URL = os.environ.get("GPUFSM_TEST_POSTGRES")
_NO_PG = ("PostgreSQL tests need GPUFSM_TEST_POSTGRES, e.g. "
          "postgresql+psycopg://postgres@127.0.0.1:5432/test (.ci/run sets it)")
#: The OpenSSH server tests/test_cli_run.py starts on loopback for ``gpufsm run``.
SSHD = Path("/usr/sbin/sshd")
#: Set by .ci/run: a missing sshd is then a failure (raised by the ``sshd`` fixture), not
#: a skip.
REQUIRE_SSHD = bool(os.environ.get("GPUFSM_TEST_REQUIRE_SSHD"))


@functools.cache
def sshd_missing() -> str | None:
    """What of the OpenSSH server and client is not installed, or None.

    Only the cheap checks: the ``sshd`` fixture still reports a server that is installed
    but cannot start.
    """
    missing = ([] if SSHD.is_file() else [str(SSHD)]) + [
        tool for tool in ("ssh", "scp", "ssh-keygen") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed" if missing else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, before any fixture runs, a test whose service is absent: one reason per cause."""
    fixtures = getattr(item, "fixturenames", ())
    if not POSTGRES_URL and (item.get_closest_marker("postgres") or "pg_url" in fixtures):
        pytest.skip(_NO_PG)
    if "sshd" in fixtures and not REQUIRE_SSHD and (missing := sshd_missing()):
        pytest.skip("needs a local OpenSSH server (apt-get install openssh-server; .ci/run "
                    f"installs it): {missing}")


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
