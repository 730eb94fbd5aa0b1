"""The README's promises, checked: its commands exist and its examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from snippets import check, execute, snippets

PATH = Path(__file__).parents[1] / "README.md"
README = PATH.read_text()


def test_first_lines_give_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "gpufsm demo" in head
    assert re.search(r"pip install -e \"\.\[dev\]\" && pytest", head)


def test_embedding_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"## Embedding it\n\n```python\n(.*?)```", README, flags=re.S)
    assert len(code.splitlines()) <= 20, "the README promises a 20-line example"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "RUNNING 127.0.0.1" in out and "CREATING launch" in out


def test_every_example_runs_twice_and_prints_what_it_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Run twice in one directory: the second run used to fail on a UNIQUE constraint
    (a fixed SQLite file kept the first run's rows), and a comment promised
    ``InstanceState.RUNNING`` where the code prints ``RUNNING``."""
    monkeypatch.chdir(tmp_path)
    blocks = snippets(PATH)
    for _ in range(2):
        for block in blocks:
            execute(block)
            check(block, capsys.readouterr().out)
    assert any(block.promises for block in blocks)


def test_the_real_provider_example_shows_where_the_adapter_comes_from() -> None:
    """Its imports run (it is not run: it would rent a machine)."""
    (real,) = [b for b in snippets(PATH) if not b.run]
    assert "from gpufsm.adapters import LambdaCloudAdapter" in real.code
    execute(real)
