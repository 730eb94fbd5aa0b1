"""Launch by requirements: offers tried cheapest first, failover past refusals, and never
two machines kept for one request — also when an attempt's outcome is unknown, when a
process dies between attempts, and when a machine turns up after the placement ended.

Runs on SQLite and, when GPUFSM_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpufsm import Fleet, InstanceState, PlacementFailed, ValidationError
from gpufsm.adapters import InstanceTypeOffer
from gpufsm.engine import PlacementPolicy
from gpufsm.placement import Requirements
from gpufsm.reconcile import Reconciler
from gpufsm.store import PlacementState, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState
A100 = Requirements(gpus=("A100",))
TEMPLATE = {"name": "train", "env": {"HF_TOKEN": "secret-value"}}


def a100(provider: str, price: float, *regions: str) -> InstanceTypeOffer:
    return InstanceTypeOffer(provider, "gpu_1x_a100", price, regions or ("r1",), 1,
                             "A100 (40 GB)")


def clouds(clock: FakeClock, prices: dict[str, float], salt: str = "") -> list[SimulatedCloud]:
    return [SimulatedCloud(name, clock=clock, instance_types=[a100(name, price)],
                           id_prefix=f"{name}-{salt}")
            for name, price in prices.items()]


@pytest.fixture
def world(store_url: str) -> Iterator[tuple[Fleet, list[SimulatedCloud], FakeClock]]:
    clock = FakeClock()
    store = SqlInstanceStore(store_url, migrate=True)
    sims = clouds(clock, {"alpha": 1.10, "beta": 1.20, "gamma": 1.50})
    try:
        yield Fleet(store, sims, clock=clock, actor="test"), sims, clock
    finally:
        store.close()


def billing(sims: list[SimulatedCloud]) -> list[str]:
    """Every machine of ours live on any cloud (what the user pays for)."""
    return [f"{c.name}:{i.id}" for c in sims for i in c.live_instances()]


def test_the_cheapest_offer_is_placed(world: Any) -> None:
    fleet, sims, _ = world
    record = fleet.launch(A100, template=TEMPLATE)
    assert (record.provider, record.instance_type, record.state) == ("alpha", "gpu_1x_a100",
                                                                      S.CREATED)
    placement = fleet.store.get_placement(record.placement_id)
    assert placement.state is PlacementState.PLACED and placement.winner_id == record.id
    assert "secret-value" not in str(placement.template)  # env values are never stored
    assert "attempt 1: alpha/gpu_1x_a100@r1" in (fleet.history(record.id)[0].reason or "")
    assert billing(sims) == [f"alpha:{record.provider_instance_id}"]


def test_a_sold_out_offer_fails_over_and_is_skipped_by_the_next_placement(world: Any) -> None:
    fleet, sims, _ = world
    fleet.catalog.offers()  # read a moment before the cheapest sold out
    sims[0].sell_out("gpu_1x_a100")
    record = fleet.launch(A100, template=TEMPLATE)
    assert record.provider == "beta"
    first, kept = fleet.store.attempts(record.placement_id)
    assert (first.provider, first.state, first.billable) == ("alpha", S.FAILED, False)
    assert kept.id == record.id
    assert fleet.history(first.id)[-1].event == "launch_failed"
    launches = sims[0].calls["launch"]
    sims[0].restock("gpu_1x_a100")
    again = fleet.launch(A100, template=TEMPLATE)  # alpha is blocked for a while
    assert again.provider == "beta" and sims[0].calls["launch"] == launches


def test_when_every_offer_refuses_one_error_lists_every_attempt(world: Any) -> None:
    fleet, sims, _ = world
    fleet.catalog.offers()  # read a moment before they sold out
    sims[0].sell_out()
    sims[1].refuse_quota()
    sims[2].sell_out()
    with pytest.raises(PlacementFailed) as caught:
        fleet.launch(A100, template=TEMPLATE)
    text = str(caught.value)
    assert [o.split("/")[0] for o, _ in caught.value.attempts] == ["alpha", "beta", "gamma"]
    assert "3 attempt(s)" in text and all(name in text for name in ("alpha", "beta", "gamma"))
    assert fleet.store.get_placement(caught.value.placement_id).state is PlacementState.FAILED
    assert billing(sims) == []
    assert not any(r.billable for r in fleet.list())


def test_attempts_stop_at_the_cap(world: Any) -> None:
    fleet, sims, _ = world
    fleet.catalog.offers()
    for sim in sims:
        sim.sell_out()
    with pytest.raises(PlacementFailed) as caught:
        fleet.launch(A100, template=TEMPLATE, policy=PlacementPolicy(max_attempts=2))
    assert len(caught.value.attempts) == 2
    assert any("max_attempts" in why for why in caught.value.skipped)


def test_nothing_matching_says_so(world: Any) -> None:
    fleet, _, _ = world
    with pytest.raises(PlacementFailed, match="no offer matches"):
        fleet.launch(Requirements(gpus=("H100",)), template=TEMPLATE)


def test_a_template_may_not_choose_the_provider(world: Any) -> None:
    fleet, _, _ = world
    with pytest.raises(ValidationError, match=r"template\.provider"):
        fleet.launch(A100, template={"provider": "alpha"})
    assert fleet.store.list_placements() == []  # refused before anything was written


def test_an_unknown_outcome_is_tracked_and_its_machine_terminated_when_it_turns_up(
        world: Any) -> None:
    """alpha creates the machine but the answer is lost, and its reads lag: the tag
    search cannot see it. The next offer is placed; when alpha's machine turns up, the
    reconciler adopts it, finds the placement kept another, and terminates it."""
    fleet, sims, clock = world
    sims[0].lag_reads(300)
    sims[0].fail_next("launch", "timeout", after_work=True)
    record = fleet.launch(A100, template=TEMPLATE)
    assert record.provider == "beta"
    lost = fleet.store.attempts(record.placement_id)[0]
    assert (lost.provider, lost.state, lost.billable) == ("alpha", S.CREATING, True)
    assert len(billing(sims)) == 2  # for now: the lost one bills until it is found
    clock.advance(400)
    for _ in range(4):
        Reconciler(fleet).run_once()
        clock.advance(60)
    assert billing(sims) == [f"beta:{record.provider_instance_id}"]
    assert fleet.get(lost.id).state in (S.TERMINATING, S.TERMINATED)
    assert any("surplus" in (h.reason or "") for h in fleet.history(lost.id))


def test_machines_of_a_dead_placement_process_keep_exactly_one(world: Any) -> None:
    """A process launched two attempts and died before claiming a winner: the reconciler
    keeps the older machine and terminates the other."""
    fleet, sims, clock = world
    from gpufsm import engine
    from gpufsm.store import PlacementRecord
    now = clock.now()
    placement = fleet.store.open_placement(PlacementRecord(
        "p-dead", {}, {}, PlacementState.OPEN, now, now))
    first = engine.launch(fleet, {"provider": "alpha", "instance_type": "gpu_1x_a100"}, None,
                          placement_id=placement.id)
    clock.advance(1)
    second = engine.launch(fleet, {"provider": "beta", "instance_type": "gpu_1x_a100"}, None,
                           placement_id=placement.id)
    for _ in range(3):
        Reconciler(fleet).run_once()
        clock.advance(60)
    assert fleet.store.get_placement(placement.id).winner_id == first.id
    assert billing(sims) == [f"alpha:{first.provider_instance_id}"]
    assert fleet.get(second.id).state in (S.TERMINATING, S.TERMINATED)


class Crash(BaseException):
    """kill -9: nothing below catches a BaseException that is not an Exception."""


OUTCOMES = st.sampled_from(["ok", "capacity", "quota", "lost", "lost-lagging", "unavailable",
                            "crash-before", "crash-after"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(prices=[100, 200, 300], outcomes=["lost-lagging", "capacity", "ok", "ok"])
@example(prices=[100, 200], outcomes=["crash-after", "ok", "ok", "ok"])
@example(prices=[300, 100, 200], outcomes=["ok", "lost-lagging", "quota", "ok"])
@given(prices=st.lists(st.integers(50, 400), min_size=1, max_size=4),
       outcomes=st.lists(OUTCOMES, min_size=4, max_size=4))
def test_failover_never_keeps_two_machines(store_url: str, prices: list[int],
                                           outcomes: list[str]) -> None:
    """Random offers, refusals, unknown outcomes and crashes: once the reconciler has
    settled, the request has at most one billable machine, every other attempt that
    made one is terminated, and every attempt is an instance row naming its offer."""
    clock = FakeClock()
    store = SqlInstanceStore(store_url, migrate=True)
    names = [f"p{i}" for i in range(len(prices))]
    salt = uuid.uuid4().hex[:8]  # one database for every example: ids must not repeat
    sims = clouds(clock, {n: p / 100 for n, p in zip(names, prices, strict=True)}, salt)
    fleet = Fleet(store, sims, clock=clock, actor="prop")
    try:
        fleet.catalog.offers()  # read before the refusals: every offer is tried
        for sim, outcome in zip(sims, outcomes, strict=False):
            _arrange(sim, outcome)
        record = None
        before = {p.id for p in store.list_placements()}  # one database for every example
        with contextlib.suppress(PlacementFailed, Crash):  # a crash: the process is gone
            record = fleet.launch(A100, template=TEMPLATE)
        for sim in sims:
            sim.clear_faults()
            vars(sim).pop("launch", None)  # the process is restarted: no more crashes
        clock.advance(600)
        for _ in range(6):
            Reconciler(fleet).run_once()
            clock.advance(120)
        live = billing(sims)
        assert len(live) <= 1, live
        (placement,) = [p for p in store.list_placements() if p.id not in before]
        rows = store.attempts(placement.id)
        billable = [r for r in rows if r.billable]
        assert len(billable) <= 1
        if record is not None:
            assert live == [f"{record.provider}:{record.provider_instance_id}"]
            assert placement.winner_id == record.id
        for row in rows:
            assert f"placement {placement.id}, attempt" in (store.history(row.id)[0].reason
                                                           or "")
    finally:
        store.close()


def _arrange(sim: SimulatedCloud, outcome: str) -> None:
    if outcome == "capacity":
        sim.sell_out()
    elif outcome == "quota":
        sim.refuse_quota()
    elif outcome == "lost":
        sim.fail_next("launch", "timeout", after_work=True)
    elif outcome == "lost-lagging":
        sim.lag_reads(300)
        sim.fail_next("launch", "timeout", after_work=True)
    elif outcome == "unavailable":
        sim.fail_next("launch", "unavailable")
    elif outcome.startswith("crash"):
        real = sim.launch

        def launch(request: Any) -> str:
            if outcome == "crash-after":
                real(request)  # the machine exists; the process dies before writing it
            raise Crash
        sim.launch = launch  # type: ignore[method-assign]


def _needs_image(sim: SimulatedCloud) -> None:
    """This provider, like Vast or RunPod, launches containers: no image, no launch."""
    real = sim.validate

    def validate(spec: Any) -> None:
        if spec.image is None:
            raise ValidationError("image", f"required: {sim.name} launches an image")
        real(spec)
    sim.validate = validate  # type: ignore[method-assign]


def test_offers_whose_provider_refuses_the_spec_are_skipped_before_anything_is_sent(
        world: Any) -> None:
    fleet, sims, _ = world
    _needs_image(sims[0])
    record = fleet.launch(A100, template=TEMPLATE)
    assert record.provider == "beta"  # alpha, the cheapest, was never tried
    assert [r.provider for r in fleet.store.attempts(record.placement_id)] == ["beta"]
    assert sims[0].calls["launch"] == 0


def test_a_spec_no_provider_can_launch_is_one_usage_error_naming_each_need(
        world: Any) -> None:
    fleet, sims, _ = world
    for sim in sims:
        _needs_image(sim)
    with pytest.raises(ValidationError) as caught:
        fleet.launch(A100, template=TEMPLATE)
    assert caught.value.field == "template"
    assert all(f"{s.name}: image: required" in str(caught.value) for s in sims)
    assert fleet.store.list_placements() == [] and fleet.list() == []


def test_a_cancelled_placement_keeps_nothing_not_even_a_machine_that_turns_up_later(
        world: Any) -> None:
    """SkyPilot #4410: cancelling a recovering job leaked its machines. Cancelling a
    placement fails it first, then terminates every attempt's machine, the winner too,
    and the reconciler terminates one that turns up afterwards."""
    fleet, sims, clock = world
    sims[0].lag_reads(300)
    sims[0].fail_next("launch", "timeout", after_work=True)
    record = fleet.launch(A100, template=TEMPLATE)
    ended = {r.id: r for r in fleet.cancel_placement(record.placement_id,
                                                      reason="user gave up")}
    assert ended[record.id].state in (S.TERMINATING, S.TERMINATED)  # the winner too
    assert fleet.store.get_placement(record.placement_id).state is PlacementState.PLACED
    clock.advance(400)
    for _ in range(4):
        Reconciler(fleet).run_once()
        clock.advance(60)
    assert billing(sims) == []
    assert not any(r.billable for r in fleet.store.attempts(record.placement_id))


def test_a_placement_cancelled_while_it_tries_stops_trying(world: Any) -> None:
    fleet, sims, _ = world
    fleet.catalog.offers()
    sims[0].sell_out()

    def cancel_on_refusal(op: str) -> None:  # another thread cancels at the first launch
        if op == "launch":
            (placement,) = fleet.store.list_placements()
            fleet.store.fail_placement(placement.id, reason="cancelled by the user",
                                       at=fleet.clock.now())
    sims[0]._on_call = cancel_on_refusal
    with pytest.raises(PlacementFailed, match="cancelled by the user"):
        fleet.launch(A100, template=TEMPLATE)
    assert sims[1].calls["launch"] == 0 and sims[2].calls["launch"] == 0


def test_a_session_of_a_placement_ends_every_attempt(world: Any) -> None:
    fleet, sims, clock = world
    sims[0].lag_reads(300)
    sims[0].fail_next("launch", "timeout", after_work=True)  # alpha: unknown, tracked
    with fleet.session(A100, template=TEMPLATE, timeout=600, poll_interval=5) as record:
        assert (record.provider, record.state) == ("beta", S.RUNNING)
    assert fleet.get(record.id).state in (S.TERMINATING, S.TERMINATED)
    clock.advance(400)
    for _ in range(4):
        Reconciler(fleet).run_once()
        clock.advance(60)
    assert billing(sims) == []
