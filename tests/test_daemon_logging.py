"""What `gpufsm reconcile` (the daemon) logs: one INFO line per pass, a problem once.

Issue 10 item 16: the daemon logged every HTTP request at INFO (httpx), "pass N" and
"pass done" for each pass, and the same orphan warning every pass. Now INFO is one line
per pass with its counts and one per change; a problem is logged when it appears or
changes, and ``cleared: …`` when it goes; httpx, httpcore, the seam's retries and
``transitions`` stay at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr
from rich.console import Console

from gpufsm import Fleet, InstanceState, SqlInstanceStore
from gpufsm.adapters import RetryPolicy, adapter_class
from gpufsm.cli._reconcile import QUIET_LOGGERS, _run
from gpufsm.reconcile import PassReport, Problem, Reconciler
from gpufsm.reconcile._daemon import PassLog
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

KEY = "daemon-log-key-1234"
ORPHAN_TAG = "gpufsm-0rphan0000000000"


def _messages(caplog: pytest.LogCaptureFixture, level: int, start: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and r.getMessage().startswith(start)]


# ---- PassLog on its own ------------------------------------------------------------------


def test_a_problem_is_logged_when_it_appears_changes_and_clears(
        caplog: pytest.LogCaptureFixture) -> None:
    orphan = Problem("orphan", "lambda", "lambda-000009 carries our tag gpufsm-x but has no "
                     "row (active); policy: report")
    listing = Problem("listing-unknown", "vastai", "listing failed: down (request r-1)")
    same_listing = Problem("listing-unknown", "vastai", "listing failed: down (request r-2)")
    moved = Problem("orphan", "lambda", orphan.message.replace("active", "unhealthy"))
    passes = [[orphan, listing], [orphan, same_listing], [moved, same_listing], [], []]
    caplog.set_level(logging.INFO, logger="gpufsm.reconcile")
    pass_log = PassLog()
    for problems in passes:
        pass_log(PassReport(problems=list(problems)))

    assert _messages(caplog, logging.WARNING) == [
        f"problem orphan lambda: {orphan.message}",
        "problem listing-unknown vastai: listing failed: down (request r-1)",
        f"problem orphan lambda: {moved.message}",  # changed: logged again
    ]  # a new request id is not a new problem
    assert _messages(caplog, logging.INFO, "cleared: ") == [
        f"cleared: orphan lambda: {orphan.message}",
        f"cleared: orphan lambda: {moved.message}",
        "cleared: listing-unknown vastai: listing failed: down (request r-2)",
    ]
    lines = _messages(caplog, logging.INFO, "pass ")
    assert len(lines) == len(passes)
    assert lines[1].startswith("pass 2: changes=0 problems=2 (new=0 cleared=0)")
    assert pass_log.open_problems == []


def test_an_alert_whose_figures_move_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A budget alert restates the spend and the hours left every pass: the same alert,
    so one WARNING, not one per pass; a different alert is still news."""
    def alert(spent: str, hours: str) -> Problem:
        return Problem("alert", "*", f"policy spend_budget: spent ${spent} of $100.00 today, "
                       f"burning $4.10/h; the cap is reached in {hours}h (2026-12-03 "
                       f"2{hours[0]}:15 UTC) at that burn")
    other = Problem("alert", "lambda", "policy hourly_budget: price unknown: not counted", "i1")
    caplog.set_level(logging.INFO, logger="gpufsm.reconcile")
    pass_log = PassLog()
    for problems in ([alert("80.10", "4.8")], [alert("82.15", "4.3")],
                     [alert("84.20", "3.8"), other]):
        pass_log(PassReport(problems=problems))
    warned = _messages(caplog, logging.WARNING)
    assert warned == [f"problem alert *: {alert('80.10', '4.8').message}",
                      f"problem alert lambda i1: {other.message}"]
    assert _messages(caplog, logging.INFO, "cleared: ") == []


# ---- the daemon, as `gpufsm reconcile` runs it, against a Lambda emulator ------------------


@dataclass
class Account:
    clock: FakeClock
    cloud: SimulatedCloud
    reconciler: Reconciler
    ids: list[str]


@pytest.fixture
def account(tmp_path: object) -> Iterator[Account]:
    """Two running instances and one orphan (our tag, no row) on an emulated Lambda."""
    clock = FakeClock()
    cloud = SimulatedCloud("lambda", clock=clock, seed=3)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    adapter = adapter_class("lambda")(SecretStr(KEY), base_url=server.url, rate_limits={},
                                      clock=clock, retry=RetryPolicy(attempts=2, initial=0.01))
    store = SqlInstanceStore("sqlite://")
    fleet = Fleet(store, [adapter], clock=clock)
    spec = {"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1",
            "ssh_key_names": ["k"]}
    ids = [fleet.launch({**spec, "name": f"w{n}"}).id for n in range(2)]
    for i in ids:
        fleet.wait_for(i, InstanceState.RUNNING, timeout=900)
    cloud.spawn_untracked(ORPHAN_TAG)
    try:
        yield Account(clock, cloud, Reconciler(fleet, actor="reconciler"), ids)
    finally:
        adapter.close()
        store.close()
        server.stop()


class _Scripted:
    """The reconciler, with something happening in the cloud before some passes."""

    def __init__(self, reconciler: Reconciler, script: dict[int, Callable[[], None]]) -> None:
        self._reconciler = reconciler
        self._script = script
        self._passes = 0

    def run_once(self) -> PassReport:
        self._passes += 1
        if step := self._script.get(self._passes):
            step()
        return self._reconciler.run_once()

    def release(self) -> int:
        return self._reconciler.release()


def test_the_daemon_logs_one_line_a_pass_and_each_problem_once(
        account: Account, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the root too: httpx would log each request at INFO
    fleet = account.reconciler.fleet
    dead = fleet.get(account.ids[0]).provider_instance_id or ""
    orphan = next(i.id for i in account.cloud.live_instances(ours_only=False)
                  if i.tag == ORPHAN_TAG)
    script = {3: lambda: account.cloud.kill(dead),  # changes in pass 3
              5: lambda: account.cloud.vanish(orphan)}  # the orphan clears in pass 5
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    code = _run(_Scripted(account.reconciler, script),  # type: ignore[arg-type]
                once=False, interval=0, as_json=False, console=Console(), max_passes=6)
    assert code == 0

    chatty = [r for r in caplog.records if r.name.split(".")[0] in ("httpx", "httpcore")
              or r.name in ("gpufsm.http", "transitions")]
    assert not [r for r in chatty if r.levelno < logging.WARNING]
    info = _messages(caplog, logging.INFO)
    passes = [m for m in info if m.startswith("pass ")]
    assert [m.split(":")[0] for m in passes] == [f"pass {n}" for n in range(1, 7)]
    assert not [m for m in info if m.startswith("pass done")]
    changes = [m for m in info if m.startswith("change ")]
    assert any(f"{account.ids[0]}: RUNNING -> FAILED (observed_failed)" in m for m in changes)
    assert passes[2].startswith("pass 3: changes=") and "changes=0" not in passes[2]
    warned = [m for m in _messages(caplog, logging.WARNING) if "orphan" in m]
    assert len(warned) == 1 and ORPHAN_TAG in warned[0]
    cleared = [m for m in info if m.startswith("cleared: orphan")]
    assert len(cleared) == 1 and passes[4].startswith("pass 5:") and "cleared=1" in passes[4]
    # the daemon put the loggers back as it found them
    assert {name: logging.getLogger(name).level for name in QUIET_LOGGERS} == levels
