"""``gpufsm cost``: rows and history made by a real Fleet on simulated clouds, read back
through the CLI with ``--database-url``.

The clock is a FakeClock, moved by hand, so every interval's length is known here and
each expected figure is worked out by hand (hours times the price the provider reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gpufsm.cli import _cost, app
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState
runner = CliRunner()
HOUR = 3600.0


@dataclass
class World:
    fleet: Fleet
    store: SqlInstanceStore
    clock: FakeClock
    url: str

    def cost(self, *args: str) -> Result:
        return runner.invoke(app, ["cost", "--database-url", self.url, *args])

    def cost_json(self, *args: str) -> dict[str, object]:
        result = self.cost("--json", *args)
        assert result.exit_code == 0, result.output
        data: dict[str, object] = json.loads(result.stdout)
        return data


@pytest.fixture
def world(store: SqlInstanceStore, store_url: str, cloud: SimulatedCloud, clock: FakeClock,
          monkeypatch: pytest.MonkeyPatch) -> World:
    """The ``sim`` cloud of conftest plus a second one named runpod (whose stopped-disk
    price the ledger knows); the command reads the same FakeClock."""
    monkeypatch.setattr(_cost, "CLOCK", clock)
    runpod = SimulatedCloud("runpod", clock=clock, seed=2)
    return World(Fleet(store, [cloud, runpod], clock=clock, actor="test"), store, clock,
                 store_url)


def launch(world: World, name: str, provider: str = "sim", **extra: object) -> str:
    spec = {"provider": provider, "instance_type": "gpu_1x_a10", "name": name, **extra}
    return world.fleet.launch(spec).id


def settle(world: World, seconds: float, *ids: str) -> None:
    """Let time pass, then look: what the providers now report is applied at this time."""
    world.clock.advance(seconds)
    for instance_id in ids:
        world.fleet.refresh(instance_id)


def finished_and_live(world: World) -> tuple[str, str, float, float]:
    """``train`` runs 2 h, terminates, is gone 10 min later; ``eval`` is then launched and
    has run 1 h at the end. Returns the ids and the two prices."""
    train = launch(world, "train")
    settle(world, HOUR, train)  # accepted at 0, RUNNING observed at 1 h
    settle(world, HOUR)
    world.fleet.terminate(train)  # TERMINATING at 2 h
    settle(world, 600, train)  # confirmed gone at 2 h 10 min
    assert world.store.get(train).state is S.TERMINATED
    evaluation = launch(world, "eval")  # at 2 h 10 min
    settle(world, 1800, evaluation)
    settle(world, 1800, evaluation)  # now: 3 h 10 min
    assert world.store.get(evaluation).state is S.RUNNING
    p_train = world.store.get(train).price_per_hour
    p_eval = world.store.get(evaluation).price_per_hour
    assert p_train and p_eval
    return train, evaluation, p_train, p_eval


def test_totals_per_row_and_burn_are_the_hand_computed_figures(world: World) -> None:
    train, evaluation, p_train, p_eval = finished_and_live(world)
    data = world.cost_json("--by", "name")
    # train billed from acceptance (0) to confirmed gone (2 h 10 min); eval 1 h so far
    assert data["total"] == pytest.approx(13 / 6 * p_train + 1 * p_eval, abs=1e-6)
    assert data["burn_per_hour"] == pytest.approx(p_eval)
    rows = {row["id"]: row for row in data["instances"]}  # type: ignore[attr-defined]
    assert set(rows) == {train, evaluation}
    assert [i["state"] for i in rows[train]["intervals"]] == ["CREATED", "RUNNING",
                                                              "TERMINATING"]
    assert [i["hours"] for i in rows[train]["intervals"]] == pytest.approx([1, 1, 1 / 6], abs=1e-6)
    assert rows[train]["burn_per_hour"] == 0
    assert rows[evaluation]["intervals"][-1]["end"] is None
    assert {g["key"]: g["cost"] for g in data["groups"]} == {  # type: ignore[attr-defined]
        "train": pytest.approx(13 / 6 * p_train, abs=1e-6),
        "eval": pytest.approx(p_eval, abs=1e-6)}
    assert data["by"] == "name" and data["currency"] == "USD" and data["estimates"] == []


def test_since_clips_the_window(world: World) -> None:
    _, evaluation, _, p_eval = finished_and_live(world)
    start = world.clock.now() - timedelta(minutes=40)  # 2 h 30 min: train is long gone
    data = world.cost_json("--since", start.isoformat())
    assert [row["id"] for row in data["instances"]] == [evaluation]  # type: ignore[attr-defined]
    assert data["total"] == pytest.approx(40 / 60 * p_eval, abs=1e-6)
    assert data["since"] == start.isoformat()
    naive = start.replace(tzinfo=None).isoformat()  # no offset: read as UTC
    assert world.cost_json("--since", naive)["total"] == data["total"]
    day = (world.clock.now() + timedelta(days=1)).date().isoformat()
    assert world.cost_json("--since", day)["instances"] == []
    quiet = world.cost("--since", day)
    assert quiet.exit_code == 0
    assert f"nothing billed since {day}T00:00:00+00:00: $0.00" in quiet.output
    zulu = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert world.cost_json("--since", zulu)["total"] == pytest.approx(data["total"])


def test_the_table_shows_whole_ids_group_totals_burn_and_the_price_note(
        world: World) -> None:
    train, evaluation, _, p_eval = finished_and_live(world)
    result = world.cost("--by", "provider")
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", " ")
    assert train in result.output and evaluation in result.output  # never cut short
    assert "provider sim" in result.output
    assert f"burning ${p_eval:,.2f}/h now (1 billing)" in flat
    assert "over 2 instances" in flat
    assert "a price change counts from the reconcile pass that saw it" in " ".join(flat.split())
    assert "estimates" not in flat


def test_stopped_machines_bill_storage_and_unknown_prices_are_footnoted(
        world: World) -> None:
    pod = launch(world, "pod", provider="runpod", options={"volumeInGb": 73})
    box = launch(world, "box")
    settle(world, HOUR, pod, box)  # both RUNNING at 1 h
    world.fleet.stop(pod)
    world.fleet.stop(box)
    settle(world, 600, pod, box)  # both STOPPED at 1 h 10 min
    settle(world, 2 * HOUR)  # now: 3 h 10 min
    assert {world.store.get(i).state for i in (pod, box)} == {S.STOPPED}
    data = world.cost_json()
    rows = {row["id"]: row for row in data["instances"]}  # type: ignore[attr-defined]
    price = world.store.get(pod).price_per_hour
    assert price
    disk = 73 * 0.20 / 730  # RunPod: $0.20 per GB-month of kept volume
    assert rows[pod]["cost"] == pytest.approx(70 / 60 * price + 2 * disk, abs=1e-6)
    assert rows[pod]["burn_per_hour"] == pytest.approx(disk, abs=1e-6)
    assert not rows[pod]["estimated"]
    assert rows[box]["estimated"]
    assert rows[box]["estimates"] == ["storage price unknown for sim: stopped time counted as $0"]
    assert data["burn_per_hour"] == pytest.approx(disk, abs=1e-6)
    result = world.cost()
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    assert "* estimates:" in flat
    assert "$0.00: storage price unknown for sim" in flat


def test_bad_flags_are_one_line_and_exit_2(world: World) -> None:
    for args, flag in ((["--since", "last tuesday"], "--since"),
                       (["--since", "2026-13-01"], "--since"),
                       (["--by", "colour"], "--by")):
        result = world.cost(*args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag}:"), result.output


def test_an_empty_database_says_so_and_exits_0(world: World) -> None:
    result = world.cost()
    assert result.exit_code == 0
    assert "no instances in the database" in result.output
    data = world.cost_json()
    assert (data["total"], data["burn_per_hour"], data["instances"], data["groups"]) == (
        0, 0, [], [])


def test_cost_reads_only(world: World) -> None:
    finished_and_live(world)
    before = [(r.id, r.version, r.updated_at) for r in world.store.list()]
    history = world.store.history_many([i for i, _, _ in before])
    assert world.cost().exit_code == 0
    assert world.cost_json()["total"]
    assert [(r.id, r.version, r.updated_at) for r in world.store.list()] == before
    assert world.store.history_many([i for i, _, _ in before]) == history


def test_a_missing_database_file_is_refused_not_created(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(_cost, "CLOCK", FakeClock())
    path = tmp_path / "nowhere.db"
    result = runner.invoke(app, ["cost", "--database-url", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "no database" in result.output
    assert not path.exists()


def test_a_price_change_is_charged_from_the_pass_that_saw_it(world: World,
                                                            cloud: SimulatedCloud) -> None:
    """A spot price moving mid-life: the hours before the change are charged at the old
    price, not the whole life at the new one (the row keeps only the latest)."""
    spot = launch(world, "spot")
    settle(world, HOUR, spot)  # accepted at 0, RUNNING seen at 1 h
    old = world.store.get(spot).price_per_hour
    assert old
    pid = world.store.get(spot).provider_instance_id
    assert pid is not None
    cloud.reprice(pid, old * 2)
    settle(world, HOUR, spot)  # the new price seen at 2 h
    settle(world, HOUR, spot)  # now: 3 h
    assert world.store.get(spot).price_per_hour == old * 2
    data = world.cost_json()
    assert data["total"] == pytest.approx(2 * old + 1 * old * 2, abs=1e-6)
    assert data["burn_per_hour"] == pytest.approx(old * 2)
    (row,) = data["instances"]  # type: ignore[misc]
    assert [(i["state"], i["hours"], i["rate"]) for i in row["intervals"]] == [
        ("CREATED", pytest.approx(1), old), ("RUNNING", pytest.approx(1), old),
        ("RUNNING", pytest.approx(1), old * 2)]
    assert data["estimates"] == []
