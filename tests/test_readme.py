"""The README's promises, checked: its commands exist and its example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()


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
    assert "InstanceState.RUNNING 127.0.0.1" in out or "RUNNING 127.0.0.1" in out
    assert "launch" in out and (tmp_path / "fleet.db").is_file()
