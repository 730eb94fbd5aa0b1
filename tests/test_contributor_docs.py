"""The contributor's map stays true: every path and module that CONTRIBUTING.md and
docs/architecture.md name in backticks exists, so a renamed or deleted room fails here
instead of misleading the next engineer."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "CONTRIBUTING.md", ROOT / "docs" / "architecture.md"]
_PATH = re.compile(r"`((?:src|tests|benchmarks|docs|\.ci)/[\w./-]*?)`")
_DOTTED = re.compile(r"`(gpufsm(?:\.\w+)+)`")


def _resolves(dotted: str) -> bool:
    """``gpufsm.a.b.NAME``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_named_path_and_module_exists(page: Path) -> None:
    text = page.read_text()
    paths = _PATH.findall(text)
    modules = _DOTTED.findall(text)
    assert paths and modules, f"{page.name} names no path or module: the check is empty"
    missing = [p for p in paths if "acme" not in p and not (ROOT / p).exists()]
    unresolved = [m for m in modules if not _resolves(m)]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"
    assert not unresolved, f"{page.name} names modules or names that do not exist: {unresolved}"


def test_adding_a_provider_starts_at_the_registry() -> None:
    """Issue 12 item 3: a provider is its own files plus one record in PROVIDERS; the page
    must not send a contributor to the registries that are now derived from it."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Adding a provider", 1)[1].split("\n## ", 1)[0]
    assert "`gpufsm.providers.PROVIDERS`" in section
    assert "`src/gpufsm/providers.py`" in section
    assert "Register it in" not in section, "ADAPTERS and DIALECTS are derived, not edited"
