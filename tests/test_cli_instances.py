"""``gpufsm instances`` as a status view: finished rows hidden, SSH, uptime and cost
columns, ids never cut, ``--refresh`` from one listing per provider; ``--json`` on the
action commands. Against the emulated Lambda account and both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli_env import LAUNCH, Env, lambda_env
from gpufsm import SqlInstanceStore
from gpufsm.adapters import ProviderInstance
from gpufsm.cli._fleetview import _ssh
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord

S = InstanceState
WAIT = ("--wait", "--poll-interval", "0.05")


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


def _rows(env: Env, *args: str) -> dict[str, dict[str, object]]:
    result = env.cli("instances", "--json", *args)
    assert result.exit_code == 0, result.output
    return {row["id"]: row for row in json.loads(result.stdout)}


def test_finished_rows_are_hidden_unless_all(env: Env) -> None:
    kept = env.launch(*WAIT)
    ended = env.launch(*WAIT)
    done = env.cli("terminate", ended, *WAIT)
    assert done.exit_code == 0, done.output
    assert env.row(ended).state is S.TERMINATED
    assert set(_rows(env)) == {kept}
    assert set(_rows(env, "--all")) == {kept, ended}
    table = env.cli("instances", "--wide")
    assert kept in table.stdout and ended not in table.stdout
    assert "1 finished row hidden" in table.stdout and "--all shows them" in table.stdout
    everything = env.cli("instances", "--all", "--wide")
    assert ended in everything.stdout and "hidden" not in everything.stdout


def test_running_row_has_ssh_uptime_cost_and_a_total(env: Env) -> None:
    row_id = env.launch(*WAIT)
    ip = env.row(row_id).ip
    assert ip
    (row,) = _rows(env).values()
    assert row["ssh"] == f"ubuntu@{ip} -p 22"  # Lambda's stock user, and no mapped port
    assert isinstance(row["uptime_seconds"], float) and 0 <= row["uptime_seconds"] < 60
    assert isinstance(row["cost_so_far"], float) and row["cost_so_far"] >= 0
    assert row["burn_per_hour"] == 0.75
    table = env.cli("instances", env={"COLUMNS": "200"})
    assert f"ubuntu@{ip} -p 22" in table.stdout
    assert "total $0.75/h now, $" in table.stdout and " so far" in table.stdout


def test_two_running_rows_add_up_in_the_footer(env: Env) -> None:
    for _ in range(2):
        env.launch(*WAIT)
    assert "total $1.50/h now" in env.cli("instances").stdout


def test_a_row_not_running_has_no_ssh(env: Env) -> None:
    row_id = env.launch()
    assert _rows(env)[row_id]["ssh"] is None


@pytest.mark.parametrize("provider", ["lambda", "vastai", "runpod"])
def test_ssh_uses_the_listed_port_and_host_and_the_run_user(provider: str) -> None:
    now = datetime.now(UTC)
    record = InstanceRecord(id="r1", provider=provider, state=S.RUNNING, version=3,
                            client_token="c", tag="gpufsm-t", name=None, billable=True,
                            spec={}, created_at=now, updated_at=now, state_entered_at=now,
                            provider_instance_id="p1", ip="203.0.113.9")
    user = "ubuntu" if provider == "lambda" else "root"
    assert _ssh(record, {}) == f"{user}@203.0.113.9 -p 22"
    seen = ProviderInstance("p1", "running", S.RUNNING, ip="203.0.113.9", ssh_port=40022,
                            ssh_host="ssh4.vast.ai" if provider == "vastai" else None)
    host = "ssh4.vast.ai" if provider == "vastai" else "203.0.113.9"
    assert _ssh(record, {(provider, "p1"): seen}) == f"{user}@{host} -p 40022"


@pytest.mark.parametrize("columns", [*range(60, 200, 7), 200])
def test_ids_types_and_ips_are_never_cut(env: Env, columns: int) -> None:
    row_id = env.launch(*WAIT, "--name", "a-rather-long-name-for-a-machine-that-folds")
    ip = env.row(row_id).ip
    assert ip
    result = env.cli("instances", env={"COLUMNS": str(columns)})
    assert result.exit_code == 0
    for whole in (row_id, "gpu_1x_a10", ip):
        assert whole in result.stdout, (columns, result.stdout)
    ssh = f"ubuntu@{ip} -p 22"
    narrow = [line for line in result.stdout.splitlines() if line.startswith("too narrow")]
    assert ssh in result.stdout or "SSH" in narrow[0]
    table = [line for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    # id, state, type and IP take 75 columns here: from there on the table fits
    assert max(map(len, table)) <= max(columns, 75)
    if columns >= 200:
        assert not narrow and ssh in result.stdout


def test_wide_puts_every_row_on_one_line(env: Env) -> None:
    env.launch(*WAIT, "--name", "a-rather-long-name-for-a-machine-that-folds")
    result = env.cli("instances", "--wide", env={"COLUMNS": "60"})
    assert "a-rather-long-name-for-a-machine-that-folds" in result.stdout
    assert "too narrow" not in result.stdout
    folded = env.cli("instances", env={"COLUMNS": "160"})
    assert "a-rather-long-name-for-a-machine-that-folds" not in folded.stdout


def test_refresh_brings_a_stale_row_up_to_date(env: Env) -> None:
    row_id = env.launch()
    pid = env.row(row_id).provider_instance_id
    assert pid
    env.wait_phase(pid, "running")
    assert _rows(env)[row_id]["state"] != "RUNNING"  # nobody has looked yet
    row = _rows(env, "--refresh")[row_id]
    assert row["state"] == "RUNNING" and row["ip"]
    assert env.row(row_id).state is S.RUNNING  # written through the engine
    assert any(h.to_state is S.RUNNING for h in env.store.history(row_id))


def test_refresh_never_concludes_a_missing_row_gone(env: Env) -> None:
    row_id = env.launch(*WAIT)
    env.cloud.vanish(env.row(row_id).provider_instance_id or "")
    assert _rows(env, "--refresh")[row_id]["state"] == "RUNNING"
    assert env.row(row_id).state is S.RUNNING


def test_refresh_with_a_failed_listing_names_the_provider(env: Env) -> None:
    row_id = env.launch(*WAIT)
    env.cloud.outage(1)
    result = env.cli("instances", "--refresh", "--json")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: lambda: could not list (") and "not refreshed" in line
    (row,) = json.loads(result.stdout)
    assert row["id"] == row_id and row["state"] == "RUNNING"


# ---- --json on the action commands -----------------------------------------------------------


def test_launch_json_is_one_object_and_only_json(env: Env) -> None:
    result = env.cli(*LAUNCH, "--json", *WAIT)
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    row = env.row(str(made["id"]))
    assert made == {"id": row.id, "state": "RUNNING", "provider": "lambda",
                    "provider_instance_id": row.provider_instance_id, "ip": row.ip,
                    "transition": {"from": None, "to": made["transition"]["to"],
                                   "reissued": False},
                    "error": None}
    assert made["transition"]["to"] == "CREATING"  # the launch's own transition


def test_launch_json_failure_has_the_error_and_exit_1(env: Env) -> None:
    result = env.cli("launch", "--provider", "lambda", "--type", "gpu_8x_h100",
                     "--region", "us-east-1", "--ssh-key", "laptop", "--json")
    assert result.exit_code == 1
    made = json.loads(result.stdout)
    assert made["id"] is not None and made["state"] == "FAILED"
    assert made["id"] == env.row(str(made["id"])).id and made["ip"] is None
    assert "insufficient-capacity" in str(made["error"])
    assert "insufficient-capacity" in result.stderr  # the human line stays on stderr
    assert not env.row(str(made["id"])).billable  # FAILED and not billing: finished
    assert made["id"] not in _rows(env) and made["id"] in _rows(env, "--all")


def test_terminate_json_reports_each_id(env: Env) -> None:
    row_id = env.launch(*WAIT)
    result = env.cli("terminate", row_id, "nope", "--json")
    assert result.exit_code == 1
    assert result.stderr.strip() == "1 of 2 failed"
    done, missing = json.loads(result.stdout)
    assert done == {"given": row_id, "id": row_id, "state": "TERMINATING",
                    "provider": "lambda",
                    "provider_instance_id": env.row(row_id).provider_instance_id,
                    "ip": env.row(row_id).ip,
                    "transition": {"from": "RUNNING", "to": "TERMINATING",
                                   "reissued": False}, "error": None}
    assert missing["given"] == "nope" and missing["id"] is None
    assert "no instance 'nope'" in missing["error"]
    again = json.loads(env.cli("terminate", row_id, "--json", *WAIT).stdout)
    assert again[0]["state"] == "TERMINATED" and again[0]["error"] is None


@pytest.mark.parametrize("verb", ["stop", "start", "restart"])
def test_verbs_json_carry_the_error_lambda_gives(env: Env, verb: str) -> None:
    row_id = env.launch(*WAIT)
    result = env.cli(verb, row_id, "--json")
    (row,) = json.loads(result.stdout)
    assert row["id"] == row_id and row["given"] == row_id
    if verb == "restart":
        assert result.exit_code == 0 and row["error"] is None
        assert row["transition"]["from"] == "RUNNING"
    else:  # Lambda cannot stop (nor start what is not stopped)
        assert result.exit_code == 1 and row["error"] and row["transition"] is None
        assert row["state"] == "RUNNING"
