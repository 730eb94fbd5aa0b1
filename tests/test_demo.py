"""`gpufsm demo`: it leaves nothing behind, it replays for a seed, and its numbers agree.

Issue 10 items 4 and 18: the demo left ``~/.local/share/gpufsm/`` and a ``.daemon.lock``
behind; two runs with one seed differed (37 vs 38 transitions); the header said 4
instances where the tables showed 6; stage titles printed twice; and the last table's
simulated time (an hour later) disagreed with the summary's.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gpufsm.cli import app
from gpufsm.cli._demo import run_demo

GPUFSM = Path(sys.executable).with_name("gpufsm")


def _summary(output: str) -> dict[str, str]:
    """The demo summary's figures (figure │ value), but the wall time."""
    figures = dict(re.findall(r"^│ +(\S.*?) +│ (\S.*?) +│$", output, flags=re.M))
    assert "transitions persisted" in figures, output
    figures.pop("wall time")
    return figures


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """`gpufsm demo` as a new user runs it, with HOME, the data dir, the cwd and TMPDIR
    each an empty folder of their own."""
    dirs = {name: tmp_path / name for name in ("home", "data", "cwd", "tmp")}
    for d in dirs.values():
        d.mkdir()
    env = {**os.environ, "HOME": str(dirs["home"]), "XDG_DATA_HOME": str(dirs["data"]),
           "TMPDIR": str(dirs["tmp"])}
    env.pop("GPUFSM_DATABASE_URL", None)
    done = subprocess.run([str(GPUFSM), "demo", "--quiet", *args], cwd=dirs["cwd"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("OK") and not done.stderr
    return done, dirs


def test_the_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    """No data directory, no lock file, nothing in the cwd; its temporary folder is gone."""
    _, dirs = _demo(tmp_path)
    left = {name: sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))
            for name, d in dirs.items()}
    assert left == {"home": [], "data": [], "cwd": [], "tmp": []}


def test_a_database_url_gets_the_rows_and_nothing_else(tmp_path: Path) -> None:
    """The rows stay where the user said; the reconcilers' lock file does not."""
    where = tmp_path / "kept"
    where.mkdir()
    _demo(tmp_path, "--database-url", f"sqlite:///{where / 'demo.db'}")
    assert sorted(p.name for p in where.iterdir()) == ["demo.db"]


def test_same_seed_same_run() -> None:
    """Every summary figure but the wall time, over three runs with one seed."""
    runs = []
    for _ in range(3):
        result = CliRunner().invoke(app, ["demo", "--quiet", "--seed", "7"])
        assert result.exit_code == 0, result.output
        runs.append(_summary(result.output))
    assert runs[0] == runs[1] == runs[2]
    other = CliRunner().invoke(app, ["demo", "--quiet", "--seed", "8"])
    assert _summary(other.output)["simulated time"] != runs[0]["simulated time"]


def _narrate(seed: int, instances: int = 4) -> str:
    screen = io.StringIO()
    assert run_demo(instances=instances, seed=seed, database_url=None,
                    console=Console(file=screen, width=200)) is True
    return screen.getvalue()


def test_same_seed_same_story() -> None:
    """The whole narration, row ids, port and wall time aside: the reconciler's changes
    print in launch order, not in the random order of row ids."""
    def masked(text: str) -> str:
        text = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|\b[0-9a-f]{8}\b", "ID", text)
        text = re.sub(r"127\.0\.0\.1:\d+", "PORT", text)
        return re.sub(r"│ wall time .*", "", text)

    assert masked(_narrate(3, instances=8)) == masked(_narrate(3, instances=8))


@pytest.mark.parametrize("instances", [1, 4])
def test_the_numbers_agree(instances: int) -> None:
    out = _narrate(7, instances)
    header = re.match(r"gpufsm demo: (\d+) instances", out)
    assert header, out[:300]
    tables = re.split(r"^┏.*$", out, flags=re.M)[1:]
    assert len(tables) == 7  # one per stage, then the summary
    last = tables[-2].split("└", 1)[0]
    rows = re.findall(r"^│ \S+ +│ (\S+) +│", last, flags=re.M)
    summary = _summary(out)
    assert int(header.group(1)) == len(rows) == int(summary["instances"]) == instances + 2
    for title in re.findall(r"^\d\. .+$", out, flags=re.M):
        assert out.count(title) == 1, f"printed more than once: {title}"
    caption = re.search(r"simulated t\+(.+?) · ", tables[-2])
    assert caption and caption.group(1) == summary["simulated time"]
