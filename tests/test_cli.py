"""The command line, run for real (typer's runner, and once as a subprocess)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gpufsm.cli import app
from gpufsm.machines import TRANSITIONS, InstanceState, to_dot, to_mermaid
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import check_invariants

runner = CliRunner()


def _figure(output: str, name: str) -> str:
    """One value of the demo's summary table (figure │ value)."""
    match = re.search(rf"^│ +{re.escape(name)} +│ (\S+) +│$", output, flags=re.M)
    assert match, f"no {name!r} in the summary:\n{output}"
    return match.group(1)


# The faults the issue names, as the summary labels them (value "survived/injected").
DEMO_FAULT_KINDS = ("capacity refusal", "429 with Retry-After", "429 without Retry-After",
                    "5xx (503, then 502)", "instance died", "preemption",
                    "launch answer lost after the work", "tag search failed",
                    "reconciler killed mid-terminate")


def test_demo_succeeds_and_reports_no_leak(store: SqlInstanceStore, store_url: str) -> None:
    """The whole job over HTTP: every fault survived, nothing left, the rows tell it."""
    result = runner.invoke(app, ["demo", "--database-url", store_url, "--quiet"])
    out = result.output
    assert result.exit_code == 0, out
    assert out.rstrip().endswith("OK") and "history of" not in out  # --quiet: summary only
    assert _figure(out, "instances left on the emulator") == "0"
    assert _figure(out, "invariants broken") == "0"
    assert _figure(out, "rows not terminated") == "0"
    assert _figure(out, "reconciler restarts") == "1"
    injected = int(_figure(out, "faults injected"))
    assert injected == 14 and int(_figure(out, "faults survived")) == injected
    for kind in DEMO_FAULT_KINDS:
        (value,) = re.findall(rf"^│   {re.escape(kind)}.*│ (\d+/\d+)\s+│$", out, flags=re.M)
        survived, of = value.split("/")
        assert survived == of != "0", f"{kind}: {value}"
    # The HTTP emulator answered real requests, and every injected HTTP fault (2 + 1 + 2
    # 429/5xx, 1 dropped launch, 4 failed listings) was answered; all but the last
    # listing attempt were retried by the seam.
    assert int(_figure(out, "API calls (HTTP)")) > 30
    assert _figure(out, "answered 429/5xx/dropped") == "10"
    assert _figure(out, "retried by the seam") == "8"

    # the rows are really in the database the demo was given, and tell the story
    rows = {r.name: r for r in store.list()}
    assert set(rows) == {"big-job", "worker-0", "worker-1", "worker-2", "worker-3", "worker-4"}
    assert {r.state for r in rows.values()} == {InstanceState.TERMINATED}
    assert {r.provider for r in rows.values()} == {"lambda"}
    assert rows["big-job"].provider_instance_id is None  # refused: nothing was made
    assert all((r.provider_instance_id or "").startswith("lambda-")
               for n, r in rows.items() if n != "big-job")
    preempted = [(h.event.value, h.actor) for h in store.history(rows["worker-0"].id)]
    assert preempted[0] == ("launch", "scheduler") and preempted[-1][0] == "observed_gone"
    assert ("terminate", "reconciler#1") in preempted  # committed, then killed
    assert ("terminate", "reconciler#2") in preempted  # re-issued by the fresh daemon
    in_doubt = [(h.event.value, h.actor, h.to_state) for h in
                store.history(rows["worker-4"].id)]
    # A pass commits its observations before its actions: the launch in doubt was found
    # by its tag and adopted by reconciler#1 before that daemon died at its terminate.
    assert in_doubt[1] == ("observed_created", "reconciler#1", InstanceState.CREATED)
    assert check_invariants(store) == []


def test_demo_as_a_new_user_runs_it(tmp_path: Path) -> None:
    """`gpufsm demo` exactly as the README says, from a fresh data directory."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
    gpufsm = Path(sys.executable).with_name("gpufsm")
    done = subprocess.run([str(gpufsm), "demo"], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # the issue: under a minute
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"Lambda-dialect emulator at\s+http://127\.0\.0\.1:\d+", out)
    assert "reconciler#1 killed" in out and "reconciler#2" in out
    assert "history of" in out and out.rstrip().endswith("OK")
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir()), "the demo keeps its rows in a temporary folder"


def test_demo_on_a_terminal_draws_a_live_table(tmp_path: Path) -> None:
    """On a terminal the table is redrawn at each step; piped, one snapshot per phase."""
    from gpufsm.cli._demo import run_demo

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    screen = io.StringIO()
    tty = Console(file=screen, force_terminal=True, width=100)
    assert run_demo(instances=2, seed=3, database_url=url, console=tty) is True
    piped = io.StringIO()
    plain = Console(file=piped, width=100)
    assert run_demo(instances=2, seed=3, database_url=url.replace("demo", "plain"),
                    console=plain) is True
    assert "\x1b[" not in piped.getvalue()  # no cursor movement when piped
    snapshots = len(re.findall(r"API calls, \d+ retried", piped.getvalue()))
    redraws = len(re.findall(r"API calls, \d+ retried", screen.getvalue()))
    assert snapshots == 6 and redraws > 3 * snapshots


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
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
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
