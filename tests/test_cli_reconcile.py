"""`gpufsm reconcile --once` against a Lambda emulator with planted drift."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from gpufsm import Fleet, InstanceState, SqlInstanceStore
from gpufsm.adapters import adapter_class
from gpufsm.cli import app
from gpufsm.fleet import DEFAULT_VISIBILITY_WINDOW
from gpufsm.providers import PROVIDERS
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, make_dialect

KEY = "cli-lambda-key-0042"
S = InstanceState


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[str, EmulatorServer, list[str]]]:
    """Three instances launched through the real adapter; then the cloud drifts."""
    clock = FakeClock()
    cloud = SimulatedCloud("lambda", clock=clock, seed=5)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    url = f"sqlite:///{tmp_path / 'reconcile.db'}"
    adapter = adapter_class("lambda")(SecretStr(KEY), base_url=server.url, rate_limits={},
                                      clock=clock)
    store = SqlInstanceStore(url)
    fleet = Fleet(store, [adapter], clock=clock)
    spec = {"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1",
            "ssh_key_names": ["k"]}
    ids = [fleet.launch({**spec, "name": f"w{n}"}).id for n in range(3)]
    for i in ids:
        fleet.wait_for(i, S.RUNNING, timeout=900)
    clock.advance(DEFAULT_VISIBILITY_WINDOW)  # past it, Lambda's not-found is believed
    cloud.kill(fleet.get(ids[0]).provider_instance_id or "")
    cloud.vanish(fleet.get(ids[1]).provider_instance_id or "")
    cloud.spawn_untracked("gpufsm-0rphan0000000000")
    store.close()
    adapter.close()
    try:
        yield url, server, ids
    finally:
        server.stop()


def test_reconcile_once_prints_what_it_changed_and_why(
        planted: tuple[str, EmulatorServer, list[str]]) -> None:
    url, server, ids = planted
    env = {"LAMBDA_API_KEY": KEY, "GPUFSM_LAMBDA_BASE_URL": server.url}
    result = CliRunner().invoke(app, ["reconcile", "--once", "--database-url", url,
                                      "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    why = {(c["instance_id"], c["event"]): c["why"] for c in report["changes"]}
    assert why[(ids[0], "observed_failed")] == "provider reports 'unhealthy'"
    assert why[(ids[0], "terminate")] == "FAILED and may still bill"
    assert why[(ids[1], "observed_gone")] == "absent from the listing; GET: not found"
    assert all(c["instance_id"] != ids[2] for c in report["changes"])
    (orphan,) = [p for p in report["problems"] if p["kind"] == "orphan"]
    assert "gpufsm-0rphan0000000000" in orphan["message"]
    assert KEY not in result.output

    table = CliRunner().invoke(app, ["reconcile", "--once", "--database-url", url], env=env)
    assert table.exit_code == 0
    assert re.search(r"reconcile pass: \d+ change", table.output)
    assert "orphan" in table.output


def test_reconcile_without_a_provider_says_which_variable(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    for provider in PROVIDERS.values():
        monkeypatch.delenv(provider.key_env, raising=False)
        monkeypatch.delenv(f"GPUFSM_{provider.key_env}", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    result = CliRunner().invoke(app, ["reconcile", "--once", "--database-url",
                                      f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code != 0
    assert "no provider configured" in str(result.exception) or \
        "no provider configured" in result.output
