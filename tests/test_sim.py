"""SimulatedCloud: seeded timings on a fake clock, lifecycles, faults and the adapter view."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufsm.adapters import InstanceTypeOffer, LaunchRequest, ProviderAdapter, ProviderInstance
from gpufsm.errors import (
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ValidationError,
)
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import SIM_STATUSES, FakeClock, SimTimings, SimulatedCloud

#: Fixed delays, so phase changes happen at known times.
FIXED = SimTimings(provision=(2.0, 2.0), boot=(10.0, 10.0), stop=(5.0, 5.0),
                   start=(7.0, 7.0), restart=(4.0, 4.0), terminate=(3.0, 3.0),
                   linger=(30.0, 30.0))


def request(token: str = "tok1", *, instance_type: str = "gpu_1x_a10",
            region: str | None = None, name: str | None = "train") -> LaunchRequest:
    spec = InstanceSpec(provider="sim", instance_type=instance_type, region=region, name=name)
    return LaunchRequest(spec=spec, tag=f"gpufsm-{token}", client_token=token)


@pytest.fixture
def fclock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(fclock: FakeClock) -> SimulatedCloud:
    return SimulatedCloud("sim", clock=fclock, seed=7, timings=FIXED)


def running(sim: SimulatedCloud, token: str = "tok1") -> str:
    pid = sim.launch(request(token))
    sim.settle(60)
    assert sim.instance(pid).phase == "running"
    return pid


def phases(sim: SimulatedCloud, pid: str, seconds: float, step: float = 0.05) -> list[str]:
    """The distinct phases an instance goes through over ``seconds`` of fake time.

    "gone" once it has vanished. Uses inspection only, so no calls are counted.
    """
    seen: list[str] = []
    t = 0.0
    while t <= seconds:
        inst = sim.instance(pid)
        phase = "gone" if inst.removed else inst.raw_status
        if not seen or seen[-1] != phase:
            seen.append(phase)
        sim.clock.advance(step)  # type: ignore[attr-defined]
        t += step
    return seen


def timeline(seed: int, n: int = 3) -> list[tuple[float, str, str]]:
    """(time, id, phase) for every phase change of ``n`` launches under ``seed``."""
    clock = FakeClock()
    sim = SimulatedCloud(clock=clock, seed=seed)
    ids = [sim.launch(request(f"t{i}")) for i in range(n)]
    last = {pid: "provisioning" for pid in ids}
    events: list[tuple[float, str, str]] = []
    while clock.monotonic() < 70:
        clock.advance(0.05)
        for pid in ids:
            phase = sim.instance(pid).phase
            if phase != last[pid]:
                events.append((round(clock.monotonic(), 2), pid, phase))
                last[pid] = phase
    return events


# ---- boot timing --------------------------------------------------------------------------


class TestBootTiming:
    def test_phases_follow_the_seeded_delays(self, fclock):
        sim = SimulatedCloud(clock=fclock, seed=11)
        rng = random.Random(11)
        provision = rng.uniform(1.0, 5.0)
        boot = rng.uniform(20.0, 60.0)
        pid = sim.launch(request())
        assert sim.get(pid).raw_status == "provisioning"
        fclock.advance(provision - 0.01)
        assert sim.get(pid).raw_status == "provisioning"
        fclock.advance(0.02)
        assert sim.get(pid).raw_status == "booting"
        fclock.advance(boot - 0.02)
        assert sim.get(pid).raw_status == "booting"
        fclock.advance(0.02)
        view = sim.get(pid)
        assert view.raw_status == "running"
        assert view.state is InstanceState.RUNNING

    def test_nothing_happens_while_the_clock_stands_still(self, sim):
        pid = sim.launch(request())
        for _ in range(5):
            assert sim.get(pid).raw_status == "provisioning"
        assert sim.clock.monotonic() == 0.0

    def test_fixed_timings_boot_sequence(self, sim):
        pid = sim.launch(request())
        assert phases(sim, pid, 13.0) == ["provisioning", "booting", "running"]

    def test_fixed_timings_are_exact(self, sim, fclock):
        pid = sim.launch(request())
        for at, phase in [(1.99, "provisioning"), (2.01, "booting"), (11.99, "booting"),
                          (12.01, "running")]:
            fclock.advance(at - fclock.monotonic())
            assert sim.instance(pid).phase == phase, at

    def test_same_seed_same_timings(self):
        assert timeline(3) == timeline(3)
        assert len(timeline(3)) == 6  # 3 instances, each booting then running

    def test_different_seeds_differ(self):
        assert timeline(3) != timeline(4)

    def test_settle_runs_everything_due(self, sim):
        ids = [sim.launch(request(f"t{i}")) for i in range(4)]
        sim.settle()
        assert {sim.instance(i).phase for i in ids} == {"running"}
        assert sim.clock.monotonic() == 3600.0

    def test_ids_and_ips_are_sequential(self, fclock):
        sim = SimulatedCloud("acme", clock=fclock)
        assert [sim.launch(request(f"t{i}")) for i in range(2)] == ["acme-000001", "acme-000002"]
        assert sim.instance("acme-000002").ip == "127.0.0.2"
        other = SimulatedCloud("acme", clock=fclock, id_prefix="i-")
        assert other.launch(request()) == "i-000001"


# ---- lifecycles ----------------------------------------------------------------------------


class TestLifecycle:
    def test_stop_then_start(self, sim):
        pid = running(sim)
        sim.stop(pid)
        assert phases(sim, pid, 6.0) == ["running", "stopping", "stopped"]
        assert sim.get(pid).state is InstanceState.STOPPED
        sim.start(pid)
        assert phases(sim, pid, 9.0) == ["stopped", "booting", "running"]

    def test_stop_while_booting(self, sim):
        pid = sim.launch(request())
        sim.settle(3)
        assert sim.instance(pid).phase == "booting"
        sim.stop(pid)
        sim.settle(60)  # the boot plan is replaced: it never reaches running
        assert sim.instance(pid).phase == "stopped"

    def test_restart(self, sim):
        pid = running(sim)
        sim.restart(pid)
        assert phases(sim, pid, 5.0) == ["running", "rebooting", "running"]
        assert SIM_STATUSES["rebooting"] is InstanceState.STARTING

    def test_terminate_lingers_then_vanishes(self, sim, fclock):
        pid = running(sim)
        sim.terminate(pid)
        assert sim.get(pid).raw_status == "terminating"  # at once
        assert sim.get(pid).state is InstanceState.TERMINATING
        fclock.advance(2.9)
        assert sim.get(pid).raw_status == "terminating"
        fclock.advance(0.2)
        view = sim.get(pid)
        assert (view.raw_status, view.state) == ("terminated", InstanceState.TERMINATED)
        assert [v.provider_instance_id for v in sim.list_instances()] == [pid]
        fclock.advance(29.8)
        assert sim.get(pid).raw_status == "terminated"
        fclock.advance(0.2)
        assert sim.get(pid) is None
        assert sim.list_instances() == []

    def test_terminate_twice_does_not_reschedule(self, sim, fclock):
        pid = running(sim)
        sim.terminate(pid)
        fclock.advance(2.0)
        sim.terminate(pid)
        fclock.advance(1.1)  # 3.1 s after the first terminate
        assert sim.get(pid).raw_status == "terminated"
        sim.terminate(pid)  # terminated: still fine
        fclock.advance(30)
        assert sim.get(pid) is None
        sim.terminate(pid)  # vanished: still fine
        assert sim.calls["terminate"] == 4

    def test_terminate_unknown_id_is_fine(self, sim):
        sim.terminate("sim-999999")
        assert sim.calls["terminate"] == 1
        assert sim.list_instances() == []

    def test_terminate_from_every_live_phase(self, sim):
        booting = sim.launch(request("a"))
        sim.settle(3)
        stopped = running(sim, "b")
        sim.stop(stopped)
        sim.settle(10)
        for pid in (booting, stopped):
            sim.terminate(pid)
            assert sim.instance(pid).phase == "terminating"
        sim.settle(100)
        assert sim.live_instances(ours_only=False) == []


class TestInvalidCommands:
    @pytest.mark.parametrize(("setup", "op"), [
        ("running", "start"),
        ("provisioning", "stop"),
        ("provisioning", "restart"),
        ("stopped", "stop"),
        ("stopped", "restart"),
        ("terminating", "start"),
        ("terminating", "stop"),
    ])
    def test_wrong_phase_is_invalid_request(self, sim, setup, op):
        pid = sim.launch(request())
        if setup != "provisioning":
            sim.settle(60)
        if setup == "stopped":
            sim.stop(pid)
            sim.settle(60)
        elif setup == "terminating":
            sim.terminate(pid)
        before = sim.instance(pid).phase
        assert before == setup
        with pytest.raises(InvalidRequest, match=f"cannot {op} an instance that is {setup}"):
            getattr(sim, op)(pid)
        assert sim.instance(pid).phase == setup
        assert sim.calls[op] == 1 + (setup == "stopped" and op == "stop")

    @pytest.mark.parametrize("op", ["start", "stop", "restart"])
    def test_unknown_id_is_not_found(self, sim, op):
        with pytest.raises(ProviderNotFound, match="no instance sim-000042"):
            getattr(sim, op)("sim-000042")

    @pytest.mark.parametrize("op", ["start", "stop", "restart"])
    def test_vanished_id_is_not_found(self, sim, op):
        pid = running(sim)
        sim.vanish(pid)
        with pytest.raises(ProviderNotFound):
            getattr(sim, op)(pid)

    def test_get_unknown_is_none(self, sim):
        assert sim.get("sim-000042") is None

    @pytest.mark.parametrize("helper", ["kill", "preempt", "vanish"])
    def test_test_helpers_on_unknown_ids_raise_key_error(self, sim, helper):
        with pytest.raises(KeyError):
            getattr(sim, helper)("nope")


# ---- faults --------------------------------------------------------------------------------


ERRORS = {
    "capacity": InsufficientCapacity,
    "credit": InsufficientCredit,
    "quota": QuotaExceeded,
    "invalid": InvalidRequest,
    "rate_limit": RateLimited,
    "unavailable": ProviderUnavailable,
    "timeout": ProviderTimeout,
}


class TestFaults:
    @pytest.mark.parametrize(("kind", "cls"), ERRORS.items())
    def test_launch_fault_raises_its_class_and_does_no_work(self, sim, kind, cls):
        sim.fail_next("launch", kind)
        with pytest.raises(cls, match=f"injected {kind} fault") as info:
            sim.launch(request())
        assert type(info.value) is cls
        assert info.value.provider == "sim"
        sim.settle()
        assert sim.live_instances(ours_only=False) == []
        assert sim.launch(request()) == "sim-000001"  # the fault is spent; no id was used

    @pytest.mark.parametrize(("kind", "cls"), ERRORS.items())
    def test_stop_fault_leaves_the_instance_alone(self, sim, kind, cls):
        pid = running(sim)
        sim.fail_next("stop", kind)
        with pytest.raises(cls):
            sim.stop(pid)
        sim.settle()
        assert sim.instance(pid).phase == "running"

    @pytest.mark.parametrize("op", ["get", "list", "instance_types", "terminate", "restart",
                                    "start"])
    def test_fault_on_each_op(self, sim, op):
        pid = running(sim)
        if op == "start":
            sim.stop(pid)
            sim.settle()
        phase = sim.instance(pid).phase
        sim.fail_next(op, "unavailable")
        call = {"get": lambda: sim.get(pid), "list": sim.list_instances,
                "instance_types": sim.instance_types, "terminate": lambda: sim.terminate(pid),
                "restart": lambda: sim.restart(pid), "start": lambda: sim.start(pid)}[op]
        with pytest.raises(ProviderUnavailable):
            call()
        sim.settle()
        assert sim.instance(pid).phase == phase
        call()  # the next one works

    def test_after_work_launch_creates_then_raises(self, sim):
        sim.fail_next("launch", "timeout", after_work=True)
        with pytest.raises(ProviderTimeout):
            sim.launch(request("leak"))
        [inst] = sim.live_instances()
        assert inst.tag == "gpufsm-leak"
        sim.settle()
        assert sim.get(inst.id).raw_status == "running"

    def test_after_work_stop_and_terminate(self, sim):
        pid = running(sim)
        sim.fail_next("stop", "unavailable", after_work=True)
        with pytest.raises(ProviderUnavailable):
            sim.stop(pid)
        sim.settle()
        assert sim.instance(pid).phase == "stopped"
        sim.fail_next("terminate", "timeout", after_work=True)
        with pytest.raises(ProviderTimeout):
            sim.terminate(pid)
        assert sim.instance(pid).phase == "terminating"

    def test_after_work_get_returns_nothing_but_raises(self, sim):
        pid = running(sim)
        sim.fail_next("get", "timeout", after_work=True)
        with pytest.raises(ProviderTimeout):
            sim.get(pid)

    def test_times_counts(self, sim):
        sim.fail_next("launch", "capacity", times=3)
        for _ in range(3):
            with pytest.raises(InsufficientCapacity):
                sim.launch(request())
        assert sim.launch(request()) == "sim-000001"
        assert sim.calls["launch"] == 4

    def test_faults_queue_in_order(self, sim):
        sim.fail_next("list", "timeout")
        sim.fail_next("list", "rate_limit", times=2)
        raised = []
        for _ in range(4):
            try:
                sim.list_instances()
                raised.append(None)
            except ProviderError as exc:
                raised.append(type(exc))
        assert raised == [ProviderTimeout, RateLimited, RateLimited, None]

    def test_faults_are_per_op(self, sim):
        sim.fail_next("get", "timeout")
        pid = sim.launch(request())
        assert sim.list_instances()[0].provider_instance_id == pid
        with pytest.raises(ProviderTimeout):
            sim.get(pid)

    def test_unknown_fault_or_op_is_value_error(self, sim):
        with pytest.raises(ValueError, match="unknown fault 'boom'"):
            sim.fail_next("launch", "boom")
        with pytest.raises(ValueError, match="unknown operation 'reboot'"):
            sim.fail_next("reboot", "timeout")
        with pytest.raises(ValueError, match="'error' or 'empty'"):
            sim.outage(1, mode="lie")

    def test_outage_error_then_recovery(self, sim):
        pid = sim.launch(request())
        sim.outage(2)
        for _ in range(2):
            with pytest.raises(ProviderUnavailable, match="simulated outage"):
                sim.list_instances()
        assert sim.get(pid) is not None  # direct reads are unaffected
        assert [v.provider_instance_id for v in sim.list_instances()] == [pid]

    def test_outage_empty_lies_then_recovers(self, sim):
        pid = sim.launch(request())
        sim.outage(3, mode="empty")
        assert [sim.list_instances() for _ in range(3)] == [[], [], []]
        assert [v.provider_instance_id for v in sim.list_instances()] == [pid]

    def test_kill_is_unhealthy_and_failed(self, sim):
        pid = running(sim)
        sim.kill(pid)
        view = sim.get(pid)
        assert (view.raw_status, view.state) == ("unhealthy", InstanceState.FAILED)
        sim.restart(pid)  # a dead instance may be restarted
        sim.settle()
        assert sim.get(pid).raw_status == "running"

    def test_kill_while_booting_cancels_the_boot(self, sim):
        pid = sim.launch(request())
        sim.kill(pid, raw_status="crashed")
        sim.settle()
        view = sim.get(pid)
        assert (view.raw_status, view.state) == ("crashed", None)
        assert sim.live_instances() != []  # still billing

    def test_preempt_then_vanish(self, sim, fclock):
        pid = running(sim)
        sim.preempt(pid)
        view = sim.get(pid)
        assert (view.raw_status, view.state) == ("preempted", InstanceState.FAILED)
        fclock.advance(29.9)
        assert sim.get(pid).raw_status == "preempted"
        fclock.advance(0.2)
        assert sim.get(pid) is None

    def test_vanish(self, sim):
        pid = running(sim)
        sim.vanish(pid)
        assert sim.get(pid) is None
        assert sim.list_instances() == []
        assert sim.live_instances(ours_only=False) == []
        sim.terminate(pid)  # idempotent on a vanished instance

    def test_set_raw_status_and_clear(self, sim):
        pid = running(sim)
        sim.set_raw_status(pid, "hibernating")
        view = sim.get(pid)
        assert (view.raw_status, view.state) == ("hibernating", None)
        assert sim.instance(pid).phase == "running"
        sim.set_raw_status(pid, None)
        assert (sim.get(pid).raw_status, sim.get(pid).state) == ("running", InstanceState.RUNNING)

    def test_a_command_clears_the_raw_override(self, sim):
        pid = running(sim)
        sim.set_raw_status(pid, "weird")
        sim.stop(pid)
        sim.settle()
        assert sim.get(pid).raw_status == "stopped"

    def test_no_credit(self, sim):
        sim.credit_ok = False
        with pytest.raises(InsufficientCredit, match="lacks credit"):
            sim.launch(request())
        assert sim.live_instances(ours_only=False) == []
        sim.credit_ok = True
        assert sim.launch(request()) == "sim-000001"

    def test_type_without_capacity(self, sim):
        with pytest.raises(InsufficientCapacity, match="gpu_8x_h100 in any region"):
            sim.launch(request(instance_type="gpu_8x_h100"))
        with pytest.raises(InsufficientCapacity, match="gpu_1x_h100 in us-west-1"):
            sim.launch(request(instance_type="gpu_1x_h100", region="us-west-1"))
        with pytest.raises(InvalidRequest, match="unknown instance type gpu_9x"):
            sim.launch(request(instance_type="gpu_9x"))
        assert sim.live_instances(ours_only=False) == []

    def test_region_defaults_to_the_first_with_capacity(self, sim):
        pid = sim.launch(request())
        assert sim.get(pid).region == "us-east-1"
        pid2 = sim.launch(request("b", region="us-west-1"))
        assert sim.get(pid2).region == "us-west-1"

    def test_spawn_untracked_is_not_a_call(self, sim):
        pid = sim.spawn_untracked("gpufsm-orphan")
        other = sim.spawn_untracked(None)
        assert sim.calls == Counter()
        assert sim.get(pid).tag == "gpufsm-orphan"
        assert sim.get(other).tag is None
        assert sim.calls == Counter({"get": 2})

    def test_spawn_untracked_as_if_made_in_the_console(self, sim):
        pid = sim.spawn_untracked(None, name="my-notebook", region="us-west-1")
        seen = sim.get(pid)
        assert seen is not None
        assert (seen.tag, seen.name, seen.region) == (None, "my-notebook", "us-west-1")
        with pytest.raises(InsufficientCapacity):
            sim.spawn_untracked(None, instance_type="gpu_1x_h100", region="us-west-1")

    @pytest.mark.parametrize(("limit", "launches"), [(0.5, False), (0.75, True), (1.0, True)])
    def test_a_price_cap_is_honoured(self, sim, limit, launches):
        """The sim is an adapter too: a type above ``max_price_per_hour`` (gpu_1x_a10 is
        $0.75/h) is refused before anything is created, as the real adapters refuse it."""
        spec = InstanceSpec(provider="sim", instance_type="gpu_1x_a10",
                            max_price_per_hour=limit)
        req = LaunchRequest(spec=spec, tag="gpufsm-cap", client_token="cap")
        if launches:
            assert sim.get(sim.launch(req)) is not None
        else:
            with pytest.raises(InsufficientCapacity, match="above max_price_per_hour"):
                sim.launch(req)
            assert sim.live_instances(ours_only=False) == []
            assert sim.calls["launch"] == 0  # refused before the launch, as over HTTP

    def test_read_lag_hides_new_instances_from_reads_not_from_commands(self, sim, fclock):
        sim.lag_reads(5.0)
        pid = sim.launch(request())
        assert sim.get(pid) is None and sim.list_instances() == []
        fclock.advance(4.9)
        assert sim.get(pid) is None
        fclock.advance(0.1)
        assert sim.get(pid) is not None and len(sim.list_instances()) == 1
        late = sim.launch(request("b"))
        sim.terminate(late)  # commands act during the lag
        assert sim.instance(late).phase == "terminating"
        with pytest.raises(ValueError, match="read lag"):
            sim.lag_reads(-1)

    def test_spawn_untracked_leaves_launch_faults_alone(self, fclock):
        seen: list[str] = []
        sim = SimulatedCloud(clock=fclock, on_call=seen.append)
        sim.fail_next("launch", "capacity")
        sim.spawn_untracked("gpufsm-orphan")
        assert seen == []
        with pytest.raises(InsufficientCapacity):
            sim.launch(request())

    def test_rename_fault_fires(self, sim):
        pid = running(sim)
        sim.fail_next("rename", "timeout")
        with pytest.raises(ProviderTimeout):
            sim.rename(pid, "new-name")


# ---- accounting and inspection -------------------------------------------------------------


class TestAccounting:
    def test_calls_count_each_op(self, sim):
        pid = sim.launch(request())
        sim.get(pid)
        sim.get(pid)
        sim.list_instances()
        sim.instance_types()
        sim.settle()
        sim.stop(pid)
        sim.settle()
        sim.start(pid)
        sim.settle()
        sim.restart(pid)
        sim.rename(pid, "x")
        sim.terminate(pid)
        sim.terminate("unknown")
        with pytest.raises(ProviderNotFound):
            sim.stop("unknown")
        assert sim.calls == Counter({"launch": 1, "get": 2, "list": 1, "instance_types": 1,
                                     "stop": 2, "start": 1, "restart": 1, "rename": 1,
                                     "terminate": 2})

    def test_inspection_is_not_counted(self, sim):
        pid = sim.launch(request())
        sim.instance(pid)
        sim.live_instances()
        sim.settle()
        sim.kill(pid)
        sim.set_raw_status(pid, "x")
        assert sim.calls == Counter({"launch": 1})

    def test_on_call_hook(self, fclock):
        seen: list[str] = []
        sim = SimulatedCloud(clock=fclock, on_call=seen.append)
        pid = sim.launch(request())
        sim.get(pid)
        sim.fail_next("list", "timeout")
        with pytest.raises(ProviderTimeout):
            sim.list_instances()
        assert seen == ["launch", "get", "list"]

    def test_live_instances(self, sim):
        ours = sim.launch(request("a"))
        gone = sim.launch(request("b"))
        dying = sim.launch(request("c"))
        stranger = sim.spawn_untracked(None)
        orphan = sim.spawn_untracked("gpufsm-orphan")
        sim.settle(60)
        sim.terminate(gone)
        sim.settle(5)  # terminated, still listed
        assert sim.get(gone).raw_status == "terminated"
        sim.terminate(dying)  # terminating: still bills
        ids = {i.id for i in sim.live_instances()}
        assert ids == {ours, dying, orphan}
        assert {i.id for i in sim.live_instances(ours_only=False)} == {
            ours, dying, orphan, stranger}
        sim.vanish(ours)
        assert {i.id for i in sim.live_instances()} == {dying, orphan}

    def test_live_instances_ours_matches_the_ownership_view(self, sim):
        named = sim.create_instance(instance_type="gpu_1x_a10", name="gpufsm-tok9/job")
        foreign = sim.create_instance(instance_type="gpu_1x_a10", name="web", tag="team-b")
        assert sim.get(named).tag == "gpufsm-tok9"
        assert sim.get(foreign).tag is None
        assert {i.id for i in sim.live_instances()} == {named}

    def test_validate(self, sim):
        sim.validate(InstanceSpec(provider="sim", instance_type="gpu_1x_a10"))
        sim.validate(InstanceSpec(provider="sim", instance_type="gpu_1x_a10",
                                  region="us-west-1"))
        sim.validate(InstanceSpec(provider="sim", instance_type="gpu_8x_h100", region="x"))
        with pytest.raises(ValidationError) as info:
            sim.validate(InstanceSpec(provider="sim", instance_type="gpu_2x_zzz"))
        assert info.value.field == "instance_type"
        assert "gpu_1x_a10, gpu_1x_h100, gpu_8x_h100" in info.value.rule
        assert isinstance(info.value, ValueError)
        with pytest.raises(ValidationError) as info:
            sim.validate(InstanceSpec(provider="sim", instance_type="gpu_1x_h100",
                                      region="us-west-1"))
        assert info.value.field == "region"
        assert info.value.rule == "gpu_1x_h100 is offered in us-east-1"
        assert sim.calls == Counter()

    def test_instance_types_and_custom_offers(self, fclock):
        offer = InstanceTypeOffer("sim", "tiny", 0.1, ("eu",), 1)
        sim = SimulatedCloud(clock=fclock, instance_types=[offer])
        assert list(sim.instance_types()) == [offer]
        pid = sim.launch(request(instance_type="tiny"))
        assert (sim.get(pid).region, sim.get(pid).price_per_hour) == ("eu", 0.1)

    def test_is_a_provider_adapter(self, sim):
        assert isinstance(sim, ProviderAdapter)
        assert sim.name == "sim"
        assert sim.capabilities.stop is True
        assert sim.capabilities.tags is True


# ---- the ProviderInstance view -------------------------------------------------------------


class TestView:
    def test_ip_and_ssh_port_only_while_running(self, sim):
        pid = sim.launch(request())
        seen = {}
        for delay, expect in [(0, "provisioning"), (3, "booting"), (10, "running")]:
            sim.clock.advance(delay)
            view = sim.get(pid)
            assert view.raw_status == expect
            seen[expect] = (view.ip, view.ssh_port)
        assert seen == {"provisioning": (None, None), "booting": (None, None),
                        "running": ("127.0.0.1", 22)}
        sim.stop(pid)
        sim.settle()
        assert (sim.get(pid).ip, sim.get(pid).ssh_port) == (None, None)
        sim.terminate(pid)
        sim.settle(5)
        assert sim.get(pid).raw_status == "terminated"
        assert (sim.get(pid).ip, sim.get(pid).ssh_port) == (None, None)

    def test_fields_read_back(self, sim):
        pid = sim.launch(request("abc", name="job-1"))
        sim.settle()
        view = sim.get(pid)
        assert view == ProviderInstance(
            provider_instance_id=pid, raw_status="running", state=InstanceState.RUNNING,
            tag="gpufsm-abc", name="gpufsm-abc/job-1", ip="127.0.0.1", region="us-east-1",
            instance_type="gpu_1x_a10", price_per_hour=0.75, ssh_port=22)
        assert sim.list_instances() == [view]

    def test_unnamed_launch_uses_the_tag_as_name(self, sim):
        pid = sim.launch(request("xyz", name=None))
        assert sim.get(pid).name == "gpufsm-xyz"
        assert sim.get(pid).tag == "gpufsm-xyz"

    def test_tag_from_name_when_no_native_tag(self, sim):
        pid = sim.create_instance(instance_type="gpu_1x_a10", name="gpufsm-n1/work")
        assert sim.get(pid).tag == "gpufsm-n1"
        other = sim.create_instance(instance_type="gpu_1x_a10", name="mine", tag="not-ours")
        assert sim.get(other).tag is None

    def test_rename_changes_the_name(self, sim):
        pid = sim.launch(request())
        sim.rename(pid, "gpufsm-tok1/renamed")
        assert sim.get(pid).name == "gpufsm-tok1/renamed"
        with pytest.raises(KeyError):
            sim.rename("nope", "x")

    def test_status_table_covers_every_phase(self):
        assert set(SIM_STATUSES) == {"provisioning", "booting", "rebooting", "running",
                                     "stopping", "stopped", "unhealthy", "preempted",
                                     "terminating", "terminated"}
        assert SIM_STATUSES["provisioning"] is InstanceState.CREATED
        assert SIM_STATUSES["unhealthy"] is InstanceState.FAILED


# ---- sell-outs and quota refusals (issue 13) ------------------------------------------------

_TYPES = (
    InstanceTypeOffer("sim", "a10", 0.75, ("east", "west"), 1, "A10",
                      extra={"region_prices": {"west": 0.81}}),
    InstanceTypeOffer("sim", "h100", 2.49, ("east",), 1, "H100"),
)
_TARGETS = [(t, r) for t in (None, "a10", "h100") for r in (None, "east", "west")]


def _on_sale(cloud: SimulatedCloud) -> set[tuple[str, str]]:
    return {(o.name, r) for o in cloud.instance_types() for r in o.regions}


def test_a_sold_out_region_leaves_the_catalog_and_refuses_launches() -> None:
    cloud = SimulatedCloud(instance_types=_TYPES)
    cloud.sell_out("a10", "east")
    assert _on_sale(cloud) == {("a10", "west"), ("h100", "east")}
    with pytest.raises(InsufficientCapacity, match="sold out"):
        cloud.create_instance(instance_type="a10", region="east", name="x")
    pid = cloud.create_instance(instance_type="a10", name="y")  # no region: lands where free
    assert cloud.instance(pid).region == "west"
    assert cloud.instance(pid).price_per_hour == 0.81  # that region's price
    cloud.restock("a10")  # lifts the sell-outs of that type, region or not
    assert cloud.sold_out == [] and ("a10", "east") in _on_sale(cloud)


def test_a_broader_sell_out_is_not_lifted_by_a_narrower_restock() -> None:
    cloud = SimulatedCloud(instance_types=_TYPES)
    cloud.sell_out()  # the whole provider
    assert _on_sale(cloud) == set()
    cloud.restock("a10", "east")
    assert _on_sale(cloud) == set() and cloud.sold_out == [(None, None)]
    cloud.restock()
    assert len(_on_sale(cloud)) == 3


def test_quota_refusals_keep_the_catalog_and_end_with_grant_or_clear() -> None:
    cloud = SimulatedCloud(instance_types=_TYPES)
    cloud.refuse_quota(region="east")
    with pytest.raises(QuotaExceeded):
        cloud.create_instance(instance_type="h100", region="east", name="x")
    assert len(_on_sale(cloud)) == 3 and cloud.live_instances(ours_only=False) == []
    cloud.create_instance(instance_type="a10", region="west", name="y")
    cloud.grant_quota()
    cloud.create_instance(instance_type="h100", region="east", name="z")
    cloud.refuse_quota("h100")
    cloud.clear_faults()
    assert cloud.quota_refused == []
    with pytest.raises(ValueError, match="unknown instance type"):
        cloud.sell_out("tpu")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(_TARGETS)), max_size=8))
def test_the_catalog_and_launches_agree_with_the_sell_outs(
        steps: list[tuple[bool, tuple[str | None, str | None]]]) -> None:
    """After any sequence of sell-outs and restocks, a (type, region) is offered exactly
    when no sell-out in force covers it, and a launch there succeeds exactly then."""
    cloud = SimulatedCloud(instance_types=_TYPES)
    for sell, target in steps:
        (cloud.sell_out if sell else cloud.restock)(*target)
    rules = cloud.sold_out
    offered = _on_sale(cloud)
    for offer in _TYPES:
        for region in offer.regions:
            covered = any((t in (None, offer.name)) and (r in (None, region)) for t, r in rules)
            assert ((offer.name, region) in offered) is not covered
            try:
                cloud.create_instance(instance_type=offer.name, region=region, name="p")
                landed = True
            except InsufficientCapacity:
                landed = False
            assert landed is not covered
