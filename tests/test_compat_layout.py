"""The compatibility suite (tests/compat/, run by tests/compat/run in its own virtualenvs)
covers every emulator dialect, with its client pinned, and stays out of the main suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpufsm.providers import PROVIDERS

COMPAT = Path(__file__).parent / "compat"
FOLDERS = sorted(p.parent for p in COMPAT.glob("*/requirements.txt"))


def test_every_dialect_is_driven_by_a_third_party_client() -> None:
    """Every provider in the registry, so a new one is enrolled by its registry line."""
    tests = "\n".join(p.read_text() for p in COMPAT.glob("*/test_*.py"))
    missing = [d for d in PROVIDERS if f"{d}_emulator" not in tests]
    assert not missing, f"no compatibility test uses the {missing} emulator"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_each_client_is_pinned_and_tested(folder: Path) -> None:
    lines = [line.strip() for line in (folder / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", ln) for ln in lines), (
        f"{folder.name}/requirements.txt must pin every package exactly: {lines}")
    assert any(ln.startswith("pytest==") for ln in lines)
    assert list(folder.glob("test_*.py")), f"{folder.name} has no tests"
    code = "".join(p.read_text() for p in folder.glob("*.py"))
    assert not re.search(r"^\s*(from|import) gpufsm", code, re.M), (
        "compatibility tests run without gpufsm installed: they reach it over HTTP only")
