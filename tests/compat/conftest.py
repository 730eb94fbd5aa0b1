"""Fixtures shared by every client's compatibility tests (standard library only).

``<dialect>_emulator`` is a fresh emulator process per test; ``emu`` is one shared by the
test module (set ``DIALECT = "..."`` in it), reset after each test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # emulator.py, without making this a package

from emulator import Emulator, emulator_process

#: The key every compatibility test gives its client; the emulator checks it.
KEY = "compat-test-key"


@pytest.fixture(autouse=True)
def _no_real_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """No client may fall back to a real provider's host: drop every proxy and URL override
    from the caller's environment; each test names the emulator's URL itself."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in ("VAST_URL", "RUNPOD_API_BASE_URL"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def _module_emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """One emulator for a whole test module, of the dialect its ``DIALECT`` names: starting
    one costs about a second, so a module of many short tests shares it."""
    with emulator_process(request.module.DIALECT, api_key=KEY) as emu:
        yield emu


@pytest.fixture
def emu(_module_emulator: Emulator) -> Iterator[Emulator]:
    """The module's emulator, handed back clean after each test (see Emulator.reset)."""
    yield _module_emulator
    _module_emulator.reset()


def _started(dialect: str) -> Iterator[Emulator]:
    with emulator_process(dialect, api_key=KEY) as emu:
        yield emu


@pytest.fixture
def lambda_emulator() -> Iterator[Emulator]:
    yield from _started("lambda")


@pytest.fixture
def vastai_emulator() -> Iterator[Emulator]:
    yield from _started("vastai")


@pytest.fixture
def novita_emulator() -> Iterator[Emulator]:
    yield from _started("novita")


@pytest.fixture
def runpod_emulator() -> Iterator[Emulator]:
    yield from _started("runpod")
