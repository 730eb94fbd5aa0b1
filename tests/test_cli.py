"""The command line, run for real (typer's runner, and once as a subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpufsm.cli import app
from gpufsm.machines import TRANSITIONS, to_dot, to_mermaid

runner = CliRunner()


def test_demo_succeeds_and_reports_no_leak(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = runner.invoke(app, ["demo", "--database-url", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(r"instances left on the cloud\s+│\s+0", result.output)
    assert re.search(r"invariants broken\s+│\s+0", result.output)
    assert re.search(r"faults survived\s+│\s+3", result.output)
    assert result.output.rstrip().endswith("OK")
    # the rows are really in the database the demo was given
    listed = runner.invoke(app, ["instances", "--database-url", url, "--json"])
    rows = json.loads(listed.output)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"TERMINATED"}
    hist = runner.invoke(app, ["history", rows[0]["id"][:8], "--database-url", url, "--json"])
    events = [h["event"] for h in json.loads(hist.output)]
    assert events[0] == "launch" and events[-1] == "observed_gone"


def test_demo_as_a_new_user_runs_it(tmp_path: Path) -> None:
    """`gpufsm demo` exactly as the README says, on the embedded default location."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    gpufsm = Path(sys.executable).with_name("gpufsm")
    done = subprocess.run([str(gpufsm), "demo"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "history of" in done.stdout and "OK" in done.stdout
    assert (tmp_path / "gpufsm" / "gpufsm-demo.db").is_file()
    assert not (tmp_path / "gpufsm" / "gpufsm.db").exists(), "demo touched the real database"


def test_diagram_is_generated_from_the_table() -> None:
    assert runner.invoke(app, ["diagram"]).output == to_mermaid()
    assert runner.invoke(app, ["diagram", "--format", "dot"]).output == to_dot()
    bad = runner.invoke(app, ["diagram", "--format", "svg"])
    assert bad.exit_code == 2 and "--format" in bad.output


def test_transitions_prints_the_table_as_data() -> None:
    result = runner.invoke(app, ["transitions", "--json"])
    rows = json.loads(result.output)
    assert len(rows) == len(TRANSITIONS)
    assert {"event": "stop", "sources": ["STARTING", "RUNNING"], "dest": "STOPPING",
            "kind": "command"}.items() <= rows[2].items()
    assert all(r["comment"] for r in rows)


def test_db_upgrade_reports_the_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    from gpufsm.store import head_revision

    assert result.exit_code == 0 and f"schema at revision {head_revision()}" in result.output


def test_unknown_instance_is_one_clear_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    gpufsm = Path(sys.executable).with_name("gpufsm")
    done = subprocess.run([str(gpufsm), "history", "nope", "--database-url", url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "error: no instance 'nope' in the store" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_help_lists_the_commands(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    for command in ("demo", "diagram", "transitions", "instances", "history", "db"):
        assert command in result.output
