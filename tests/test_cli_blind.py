"""Issue 9, item 6: a provider we cannot see while rows there may bill is a loud failure.

Three ways to be blind — the key unset, the key refused (401), the API unreachable —
against three commands that must not pass for healthy: ``destroy-all --yes`` (it used to
print ``Destroyed 0/0`` and exit 0 with the machines running), ``instances --remote``
(it used to drop the provider in silence) and ``reconcile --once``. Each names the
provider, says how many billable rows are at stake, and exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli_env import Env, free_port, lambda_env
from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.store import InstanceRecord

S = InstanceState


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


def _blind(env: Env, how: str) -> tuple[dict[str, str | None], str]:
    """The variables that make Lambda unseeable ``how``, and the reason the line gives."""
    if how == "unset":
        return {"LAMBDA_API_KEY": None}, "(LAMBDA_API_KEY not set)"
    if how == "401":
        return {"LAMBDA_API_KEY": "wrong-key-123"}, "(401 API key was invalid"
    closed = f"http://127.0.0.1:{free_port()}"
    return {"GPUFSM_LAMBDA_BASE_URL": closed}, closed


@pytest.fixture
def billing(env: Env) -> list[str]:
    """Three rows that may bill (two running, one just created), one that cannot."""
    ids = [env.launch("--wait", "--poll-interval", "0.05") for _ in range(2)]
    ids.append(env.launch())
    gone = env.launch()
    assert env.cli("terminate", gone, "--wait", "--poll-interval", "0.05").exit_code == 0
    return ids


BLIND = pytest.mark.parametrize("how", ["unset", "401", "unreachable"])


@BLIND
def test_destroy_all_on_a_blind_provider_says_what_is_at_stake_and_fails(
        env: Env, billing: list[str], how: str) -> None:
    variables, why = _blind(env, how)
    calls = env.cloud.calls["terminate"]
    result = env.cli("destroy-all", "--yes", env=variables)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: lambda: could not list ") and why in line
    assert line.endswith("): 3 billable rows there not destroyed")
    assert "wrong-key-123" not in result.output
    # the summary comes last, after the error
    assert result.output.splitlines()[-1] == "Destroyed 0/0"
    assert result.output.index("error: lambda") < result.output.index("Destroyed 0/0")
    assert env.cloud.calls["terminate"] == calls
    assert all(env.row(i).state is not S.TERMINATING for i in billing)


@BLIND
def test_instances_remote_on_a_blind_provider_says_what_is_at_stake_and_fails(
        env: Env, billing: list[str], how: str) -> None:
    variables, why = _blind(env, how)
    result = env.cli("instances", "--remote", "--json", env=variables)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: lambda: could not list ") and why in line
    assert line.endswith("): 3 billable rows there not checked (shown as '?')")
    shown = {r["id"]: r["remote_status"] for r in json.loads(result.stdout)}
    assert {shown[i] for i in billing} == {"?"}


def test_a_provider_without_a_key_and_nothing_billing_there_is_not_blind(
        env: Env, billing: list[str]) -> None:
    """A provider nobody uses is not configured, and that is fine: only rows that may
    bill make an unseen provider a failure."""
    now = datetime.now(UTC)
    env.store.insert(InstanceRecord(
        id="99999999-2222-3333-4444-555555555555", provider="runpod", state=S.FAILED,
        version=1, client_token="r" * 16, tag="gpufsm-" + "r" * 16, name="old", billable=False,
        spec={}, created_at=now, updated_at=now, state_entered_at=now), actor="test")
    result = env.cli("instances", "--remote", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    destroyed = env.cli("destroy-all", "--yes")
    assert destroyed.exit_code == 0, destroyed.output
    assert destroyed.stdout.splitlines()[-1] == "Destroyed 3/3"


def test_an_unset_key_with_rows_elsewhere_is_blind_next_to_a_seen_provider(
        env: Env, billing: list[str]) -> None:
    """Lambda is seen and cleaned up; RunPod has a row that may bill and no key: the
    command does what it can and still exits 1, naming RunPod."""
    now = datetime.now(UTC)
    env.store.insert(InstanceRecord(
        id="88888888-2222-3333-4444-555555555555", provider="runpod", state=S.RUNNING,
        version=1, client_token="p" * 16, tag="gpufsm-" + "p" * 16, name="pod", billable=True,
        spec={}, created_at=now, updated_at=now, state_entered_at=now,
        provider_instance_id="pod-1"), actor="test")
    result = env.cli("destroy-all", "--yes")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: runpod: could not list (RUNPOD_API_KEY not set): 1 billable row there not "
        "destroyed"]
    assert result.output.splitlines()[-1] == "Destroyed 3/3"
    assert {env.row(i).state for i in billing} <= {S.TERMINATING, S.TERMINATED}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_reconcile_once_on_a_refused_key_is_not_ok(env: Env, billing: list[str]) -> None:
    """Needs the reconciler's ``blind`` problem (reconcile/_pass.py)."""
    result = env.cli("reconcile", "--once", "--json", env={"LAMBDA_API_KEY": "wrong-key-123"})
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (blind,) = [p for p in report["problems"] if p["kind"] == "blind"]
    assert blind["provider"] == "lambda" and "3" in blind["message"]
    assert "wrong-key-123" not in result.output


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_reconcile_once_with_no_key_at_all_but_billable_rows_is_blind_not_usage(
        env: Env, billing: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider configured is a usage error (exit 2) on an empty database; with rows
    that may bill, it is a pass that could not watch them: each provider blind, exit 1."""
    monkeypatch.chdir(tmp_path)  # no .env here
    result = env.cli("reconcile", "--once", "--json", env={"LAMBDA_API_KEY": None})
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    (blind,) = [p for p in report["problems"] if p["kind"] == "blind"]
    assert blind["provider"] == "lambda" and "3 billable row(s)" in blind["message"]
    empty = env.cli("reconcile", "--once", env={
        "LAMBDA_API_KEY": None, "GPUFSM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    assert empty.exit_code == 2 and "no provider configured" in empty.output
    assert not (tmp_path / "empty.db").exists()  # not created to learn it holds nothing
