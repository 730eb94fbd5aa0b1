"""Every ```python block in docs/ runs, in order per file, in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_there_are_docs() -> None:
    assert PAGES, "docs/ has no pages"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for n, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
        exec(compile(block, f"{page.name}[block {n}]", "exec"), {"__name__": "docs"})


def test_the_concepts_diagram_is_the_table() -> None:
    from gpufsm.machines import to_mermaid

    text = (DOCS / "concepts.md").read_text()
    (drawn,) = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    assert drawn == to_mermaid(), "regenerate: gpufsm diagram > the block in docs/concepts.md"
