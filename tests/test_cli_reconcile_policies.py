"""`gpufsm reconcile` policy flags: parsed (a bad value is one line naming its flag, exit
2, before anything is opened), said once, and carried out against a Lambda emulator."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console
from typer.testing import CliRunner

from gpufsm import Fleet, InstanceState, SqlInstanceStore
from gpufsm.adapters import adapter_class
from gpufsm.cli import _reconcile, app
from gpufsm.cli._reconcile import PolicyFlags, parse_duration, policies_from_flags
from gpufsm.errors import ValidationError
from gpufsm.reconcile import Reconciler, SpendBudget
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

KEY = "cli-lambda-key-0077"
S = InstanceState
SPEC = {"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1",
        "ssh_key_names": ["k"]}


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("45", 45), ("1.5h", 5400),
    (" 10M ", 600)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--max-lifetime", text) == seconds


def test_good_flags_make_the_policies_in_order() -> None:
    chosen = policies_from_flags(PolicyFlags(
        max_lifetime="6h", idle_timeout="30m", hourly_budget="$12.5",
        budgets=["100/day", "2000/Month", "$25/run"], budget_alert="0.9"))
    labels = [label for label, _ in chosen]
    assert labels == ["insufficient_credit_emergency", "max_lifetime 21600s",
                      "idle_timeout 1800s", "hourly_budget $12.50/h",
                      "spend_budget $100.00/day (alert at 90%)",
                      "spend_budget $2,000.00/month (alert at 90%)",
                      "spend_budget $25.00/run (alert at 90%)"]
    budgets = [p for _, p in chosen if isinstance(p, SpendBudget)]
    assert [(b.cap, b.window, b.alert_at) for b in budgets] == [
        (100, "day", 0.9), (2000, "month", 0.9), (25, "run", 0.9)]
    assert [label for label, _ in policies_from_flags(PolicyFlags())] == [
        "insufficient_credit_emergency"]  # always on, and alone by default


BAD = [
    (["--max-lifetime", "6x"], "--max-lifetime"),
    (["--max-lifetime", "0"], "--max-lifetime"),
    (["--max-lifetime", "-5m"], "--max-lifetime"),
    (["--idle-timeout", "soon"], "--idle-timeout"),
    (["--idle-timeout", "inf"], "--idle-timeout"),
    (["--hourly-budget", "lots"], "--hourly-budget"),
    (["--hourly-budget", "0"], "--hourly-budget"),
    (["--hourly-budget", "nan"], "--hourly-budget"),
    (["--budget", "100"], "--budget"),
    (["--budget", "100/week"], "--budget"),
    (["--budget", "abc/day"], "--budget"),
    (["--budget", "-3/day"], "--budget"),
    (["--budget", "1/day", "--budget", "2/day"], "--budget"),
    (["--budget", "1/day", "--budget-alert", "1.2"], "--budget-alert"),
    (["--budget-alert", "0"], "--budget-alert"),
    (["--budget-alert", "most"], "--budget-alert"),
]


@pytest.mark.parametrize(("args", "flag"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_value_is_one_line_naming_the_flag(args: list[str], flag: str,
                                                 tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    result = CliRunner().invoke(app, ["reconcile", "--once", "--database-url",
                                      f"sqlite:///{db}", *args],
                                env={"LAMBDA_API_KEY": KEY})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:"), result.output
    duplicate = "twice" in lines[0]
    assert duplicate or ("e.g." in lines[0] and repr(args[-1]) in lines[0]), lines[0]
    assert not db.exists()  # refused before anything was opened


def test_a_bad_value_from_python_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as caught:
        policies_from_flags(PolicyFlags(budgets=["5/fortnight"]))
    assert caught.value.field == "--budget"


# -- against the emulator ----------------------------------------------------------------


@dataclass
class World:
    url: str
    server: EmulatorServer
    clock: FakeClock
    store: SqlInstanceStore
    fleet: Fleet

    def reconcile(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["reconcile", "--once", "--database-url", self.url,
                                          *args],
                                    env={"LAMBDA_API_KEY": KEY,
                                         "GPUFSM_LAMBDA_BASE_URL": self.server.url})
        return result.exit_code, result.output

    def running(self) -> str:
        record = self.fleet.launch(SPEC)
        self.fleet.wait_for(record.id, S.RUNNING, timeout=900)
        return record.id


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A Lambda emulator over a simulated cloud; the CLI's reconciler and the test's
    fleet share one fake clock, so "an hour later" is exact."""
    clock = FakeClock()
    cloud = SimulatedCloud("lambda", clock=clock, seed=11)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    monkeypatch.setattr(_reconcile, "CLOCK", clock)
    url = f"sqlite:///{tmp_path / 'policies.db'}"
    adapter = adapter_class("lambda")(SecretStr(KEY), base_url=server.url, rate_limits={},
                                      clock=clock)
    store = SqlInstanceStore(url)
    try:
        yield World(url, server, clock, store, Fleet(store, [adapter], clock=clock))
    finally:
        store.close()
        adapter.close()
        server.stop()


def test_a_day_budget_ends_a_machine_that_billed_past_it(world: World) -> None:
    machine = world.running()
    world.clock.advance(3600)  # an hour of an A10: far past one cent
    code, out = world.reconcile("--budget", "0.01/day", "--json")
    assert code == 1, out  # the alert makes the pass not ok
    report = json.loads(out)
    assert report["notes"][0] == ("policies: insufficient_credit_emergency, "
                                  "spend_budget $0.0100/day (alert at 80%)")
    (ended,) = [c for c in report["changes"] if c["event"] == "terminate"]
    assert ended["instance_id"] == machine
    assert ended["why"].startswith("policy spend_budget_day: spent $")
    assert "of $0.0100 this day (since 2026-01-01 00:00 UTC): over the cap" in ended["why"]
    (alert,) = [p for p in report["problems"] if p["kind"] == "alert"]
    assert "over the cap: terminating 1 billing machine(s), newest first" in alert["message"]
    assert world.fleet.get(machine).state in (S.TERMINATING, S.TERMINATED)
    assert KEY not in out

    code, table = world.reconcile("--budget", "0.01/day")  # the table says why too
    assert "policies: insufficient_credit_emergency, spend_budget" in table
    assert "over the cap" in table


def test_under_the_budget_nothing_is_ended(world: World) -> None:
    machine = world.running()
    world.clock.advance(3600)
    code, out = world.reconcile("--budget", "100/day", "--json")
    assert code == 0, out
    assert [c for c in json.loads(out)["changes"] if c["event"] == "terminate"] == []
    assert world.fleet.get(machine).state is S.RUNNING


def test_max_lifetime_ends_the_old_machine_only(world: World) -> None:
    old = world.running()
    world.clock.advance(2 * 3600)
    young = world.running()
    code, out = world.reconcile("--max-lifetime", "1h", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["notes"][0] == "policies: insufficient_credit_emergency, max_lifetime 3600s"
    (ended,) = [c for c in report["changes"] if c["event"] == "terminate"]
    assert ended["instance_id"] == old
    assert ended["why"].startswith("policy max_lifetime: alive ")
    assert ended["why"].endswith("s > 3600s")
    assert "policy max_lifetime: acted on 1/1" in report["notes"]
    assert world.fleet.get(old).state in (S.TERMINATING, S.TERMINATED)
    assert world.fleet.get(young).state is S.RUNNING


def test_the_daemon_says_its_policies_once_at_start(caplog: pytest.LogCaptureFixture
                                                    ) -> None:
    clock = FakeClock()
    fleet = Fleet(SqlInstanceStore("sqlite://"), [SimulatedCloud("sim", clock=clock)],
                  clock=clock)
    caplog.set_level(logging.INFO, logger="gpufsm.reconcile")
    code = _reconcile._run(Reconciler(fleet), once=False, interval=0, as_json=False,
                           console=Console(), max_passes=3,
                           policies=["insufficient_credit_emergency", "max_lifetime 60s"])
    assert code == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("policies:")]
    assert said == ["policies: insufficient_credit_emergency, max_lifetime 60s"]
