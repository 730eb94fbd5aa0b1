"""``gpufsm launch --gpu``: ask for a GPU, not a provider, from the command line, against a
Lambda emulator on loopback: the cheapest offer placed, failover past a refusal, one
error listing every attempt, usage errors naming the flag, and ``gpufsm history`` of a
placement listing its attempts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_env import Env, lambda_env
from gpufsm import InstanceState, SqlInstanceStore
from gpufsm.store import PlacementState

S = InstanceState
GPU = ["launch", "--ssh-key", "laptop", "--gpu"]


@pytest.fixture
def env(store: SqlInstanceStore, store_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from lambda_env(store, store_url, tmp_path, monkeypatch)


def test_a_gpu_is_placed_on_the_cheapest_offer(env: Env) -> None:
    result = env.cli(*GPU, "A10", "--name", "job")
    assert result.exit_code == 0, result.output
    row = env.row(result.stdout.strip())
    assert (row.provider, row.instance_type, row.region, row.name) == (
        "lambda", "gpu_1x_a10", "us-east-1", "job")  # us-east-1 and us-west-1 tie on price
    placement = env.store.get_placement(row.placement_id or "")
    assert placement.state is PlacementState.PLACED and placement.winner_id == row.id


def test_a_refused_offer_fails_over_and_the_history_lists_both(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity")
    result = env.cli(*GPU, "A10", "--wait", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    row = env.row(result.stdout.strip())
    assert (row.region, row.state) == ("us-west-1", S.RUNNING)
    first, kept = env.store.attempts(row.placement_id or "")
    assert (first.region, first.state, first.billable) == ("us-east-1", S.FAILED, False)
    shown = env.cli("history", (row.placement_id or "")[:8])
    assert shown.exit_code == 0, shown.output
    assert "us-east-1" in shown.stdout and "us-west-1" in shown.stdout and "kept" in shown.stdout
    data = json.loads(env.cli("history", row.placement_id or "", "--json").stdout)
    assert [a["instance_id"] for a in data["attempts"]] == [first.id, kept.id]
    assert data["attempts"][0]["outcome"] != "kept" and data["attempts"][1]["outcome"] == "kept"
    one = env.cli("history", row.id)
    assert f"an attempt of placement {row.placement_id}" in one.stdout


def test_nothing_placed_lists_every_attempt_and_exits_1(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity", times=2)
    result = env.cli(*GPU, "A10")
    assert result.exit_code == 1, result.output
    assert "no machine after 2 attempt(s)" in result.stderr
    assert "us-east-1" in result.stderr and "us-west-1" in result.stderr
    assert not any(r.billable for r in env.store.list())
    assert env.cloud.live_instances() == []


def test_a_price_cap_nothing_meets_says_so(env: Env) -> None:
    result = env.cli(*GPU, "H100", "--max-price", "2")
    assert result.exit_code == 1, result.output
    assert "no offer matches" in result.stderr
    assert env.store.list() == []


@pytest.mark.parametrize(("args", "flag"), [
    (["Z999"], "--gpu"),
    (["A10", "--type", "gpu_1x_a10"], "--type"),
    (["A10:2", "--gpus", "1"], "--gpus"),
    (["A10", "--provider", "nosuch"], "--provider"),
])
def test_bad_placement_flags_name_the_flag_and_exit_2(env: Env, args: list[str],
                                                       flag: str) -> None:
    result = env.cli(*GPU, *args)
    assert result.exit_code == 2, result.output
    assert flag in result.stderr
    assert env.store.list() == [] and env.requests() == 0
