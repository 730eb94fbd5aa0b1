"""Every ```python block in docs/ runs, in order per page, twice in one directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpufsm.adapters import adapter_class
from gpufsm.providers import PROVIDERS
from snippets import check, execute, snippets

DOCS = Path(__file__).parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def test_there_are_docs() -> None:
    assert PAGES, "docs/ has no pages"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run_twice(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """A reader runs an example, then runs it again: the second run must not meet the
    first one's leftovers (a fixed SQLite file name met a UNIQUE constraint), and each
    run prints what the page's comments say."""
    monkeypatch.chdir(tmp_path)
    blocks = snippets(page)
    for _ in range(2):
        for block in blocks:
            execute(block)
            check(block, capsys.readouterr().out)


def test_the_concepts_diagram_is_the_table() -> None:
    from gpufsm.machines import to_mermaid

    text = (DOCS / "concepts.md").read_text()
    (drawn,) = re.findall(r"```mermaid\n(.*?)```", text, re.S)
    assert drawn == to_mermaid(), "regenerate: gpufsm diagram > the block in docs/concepts.md"


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_provider_status_tables_match_the_adapters(name: str) -> None:
    """docs/providers.md has a section per registered provider, headed with its title,
    printing exactly the status table its adapter declares."""
    mapping = adapter_class(name).profile.statuses
    text = (DOCS / "providers.md").read_text()
    section = f"## {PROVIDERS[name].title}"
    assert section in text, f"docs/providers.md has no {section!r} section"
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| (\S+) \| ([A-Z]+) \|$", body, re.M))
    assert documented == {raw: state.value for raw, state in mapping.items()}
