"""The engine façade on the simulated cloud, over every store backend."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from conftest import SPEC
from gpufsm import (
    Capabilities,
    Event,
    Fleet,
    GuardContext,
    InstanceState,
    InsufficientCapacity,
    InsufficientCredit,
    Observation,
    ProviderTimeout,
    ProviderUnavailable,
    TransitionNotAllowed,
    ValidationError,
    WaitFailed,
    WaitTimeout,
)
from gpufsm.adapters import ProviderInstance
from gpufsm.fleet import DEFAULT_VISIBILITY_WINDOW
from gpufsm.store import InstanceRecord, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants

S = InstanceState


def running(fleet: Fleet) -> str:
    rec = fleet.launch(SPEC)
    return fleet.wait_for(rec.id, S.RUNNING, timeout=600).id


def path(fleet: Fleet, instance_id: str) -> list[str]:
    return [f"{h.event.value}>{h.to_state.value}" for h in fleet.history(instance_id)]


def test_whole_life_on_the_simulated_cloud(fleet: Fleet, cloud: SimulatedCloud) -> None:
    rec = fleet.launch(SPEC)
    assert rec.state is S.CREATED and rec.provider_instance_id == "sim-000001"
    assert rec.tag.startswith("gpufsm-") and cloud.instance("sim-000001").tag == rec.tag
    rec = fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    assert rec.ip is not None and rec.last_raw_status == "running"
    fleet.stop(rec.id)
    fleet.wait_for(rec.id, S.STOPPED, timeout=600)
    fleet.start(rec.id)
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    fleet.restart(rec.id)
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    fleet.terminate(rec.id)
    final = fleet.wait_for(rec.id, S.TERMINATED, timeout=600)
    assert final.billable is False
    assert path(fleet, rec.id) == [
        "launch>CREATING", "observed_created>CREATED", "observed_starting>STARTING",
        "observed_running>RUNNING", "stop>STOPPING", "observed_stopped>STOPPED",
        "start>STARTING", "observed_running>RUNNING", "restart>STARTING",
        "observed_running>RUNNING", "terminate>TERMINATING", "observed_gone>TERMINATED",
    ]
    assert check_invariants(fleet.store) == []
    assert cloud.live_instances() == []


def test_row_is_committed_before_the_provider_call(fleet: Fleet, clock: FakeClock,
                                                   store: SqlInstanceStore) -> None:
    seen: list[list[S]] = []
    cloud = SimulatedCloud("sim2", clock=clock,
                           on_call=lambda op: seen.append([r.state for r in store.list()]))
    fleet.adapters["sim2"] = cloud
    fleet.launch({**SPEC, "provider": "sim2"})
    assert seen[0] == [S.CREATING]  # the launch call saw the CREATING row already


# -- illegal commands: refused, no provider call, nothing written ------------------------

COMMANDS = ["start", "stop", "restart", "terminate"]
_TABLE_LEGAL = {"start": {S.CREATED, S.STOPPED}, "stop": {S.STARTING, S.RUNNING},
                "restart": {S.RUNNING, S.FAILED}, "terminate": set(S) - {S.TERMINATED}}
# A FAILED row from a refused launch has no provider id, so restart is refused there too;
# terminate of TERMINATED is idempotent (no call, no write) rather than an error.
ILLEGAL = [(state, command) for command in COMMANDS for state in S
           if state not in _TABLE_LEGAL[command] or (command, state) == ("restart", S.FAILED)]


def _put_in(fleet: Fleet, cloud: SimulatedCloud, state: S) -> str:
    """Drive a fresh instance into ``state`` through legal moves."""
    if state is S.FAILED:
        cloud.fail_next("launch", "capacity")
        with pytest.raises(InsufficientCapacity) as info:
            fleet.launch(SPEC)
        assert info.value.instance_id is not None
        return info.value.instance_id
    if state is S.CREATING:
        cloud.fail_next("launch", "unavailable")
        with pytest.raises(ProviderUnavailable) as info2:
            fleet.launch(SPEC)
        assert info2.value.instance_id is not None
        return info2.value.instance_id
    rec = fleet.launch(SPEC)
    if state is S.CREATED:
        return rec.id
    if state is S.TERMINATING:
        return fleet.terminate(rec.id).id
    if state is S.TERMINATED:
        fleet.terminate(rec.id)
        return fleet.wait_for(rec.id, S.TERMINATED, timeout=600).id
    if state is S.STARTING:
        return fleet.wait_for(rec.id, S.STARTING, timeout=600, poll_interval=1).id
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    if state is S.RUNNING:
        return rec.id
    fleet.stop(rec.id)
    if state is S.STOPPING:
        return rec.id
    return fleet.wait_for(rec.id, S.STOPPED, timeout=600).id


@pytest.mark.parametrize(("state", "command"), ILLEGAL, ids=[f"{s}-{c}" for s, c in ILLEGAL])
def test_illegal_commands_have_no_side_effect(fleet: Fleet, cloud: SimulatedCloud,
                                              state: S, command: str) -> None:
    instance_id = _put_in(fleet, cloud, state)
    before = fleet.get(instance_id)
    assert before.state is state
    history, calls = len(fleet.history(instance_id)), Counter(cloud.calls)
    if command == "terminate":  # TERMINATED: idempotent, returned as is
        assert fleet.terminate(instance_id) == before
    else:
        with pytest.raises(TransitionNotAllowed) as info:
            getattr(fleet, command)(instance_id)
        assert info.value.state == state.value and info.value.event == command
    assert fleet.get(instance_id) == before
    assert len(fleet.history(instance_id)) == history
    assert cloud.calls == calls


def test_provider_without_stop_refuses_before_any_call(store: SqlInstanceStore,
                                                       clock: FakeClock) -> None:
    lam = SimulatedCloud("lambda", clock=clock, capabilities=Capabilities(stop=False))
    fleet = Fleet(store, [lam], clock=clock)
    rec = fleet.launch({**SPEC, "provider": "lambda"})
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    calls = Counter(lam.calls)
    with pytest.raises(TransitionNotAllowed, match="cannot stop instances; terminate it"):
        fleet.stop(rec.id)
    assert lam.calls == calls and fleet.get(rec.id).state is S.RUNNING


def test_policy_guard_refuses_commands(store: SqlInstanceStore, cloud: SimulatedCloud,
                                       clock: FakeClock) -> None:
    def no_restarts(ctx: GuardContext) -> str | None:
        return "restarts are frozen" if ctx.event is Event.RESTART else None

    fleet = Fleet(store, [cloud], clock=clock, guards=[no_restarts])
    instance_id = running(fleet)
    with pytest.raises(TransitionNotAllowed, match="refused by policy: restarts are frozen"):
        fleet.restart(instance_id)
    assert fleet.get(instance_id).state is S.RUNNING


# -- launch faults -------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "error"), [
    ("capacity", InsufficientCapacity), ("credit", InsufficientCredit)])
def test_refused_launch_is_failed_and_not_billable(fleet: Fleet, cloud: SimulatedCloud,
                                                   fault: str, error: type) -> None:
    cloud.fail_next("launch", fault)
    with pytest.raises(error) as info:
        fleet.launch(SPEC)
    rec = fleet.get(info.value.instance_id)
    assert (rec.state, rec.billable, rec.provider_instance_id) == (S.FAILED, False, None)
    assert fault in (rec.last_error or "")
    assert path(fleet, rec.id) == ["launch>CREATING", "launch_failed>FAILED"]
    # and terminate closes it without a provider call: nothing was ever created
    calls = Counter(cloud.calls)
    assert fleet.terminate(rec.id).state is S.TERMINATED
    assert cloud.calls == calls


def test_launch_that_times_out_after_creating_is_adopted(fleet: Fleet,
                                                         cloud: SimulatedCloud) -> None:
    cloud.fail_next("launch", "timeout", after_work=True)
    rec = fleet.launch(SPEC)  # no error: the instance exists and is tracked
    assert rec.provider_instance_id == "sim-000001" and rec.state is S.CREATED
    assert "ProviderTimeout" in (rec.last_error or "")
    assert fleet.history(rec.id)[1].reason == "found by ownership tag"


def test_launch_outcome_unknown_stays_creating(fleet: Fleet, cloud: SimulatedCloud) -> None:
    cloud.fail_next("launch", "timeout")  # no work done, and the tag is nowhere
    with pytest.raises(ProviderTimeout) as info:
        fleet.launch(SPEC)
    rec = fleet.get(info.value.instance_id)
    assert (rec.state, rec.billable) == (S.CREATING, True)  # unknown ⇒ assume it bills


def test_creating_row_is_healed_by_refresh_when_the_instance_shows_up(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    cloud.fail_next("launch", "timeout", after_work=True)
    cloud.fail_next("list", "unavailable")  # the immediate tag search fails too
    with pytest.raises(ProviderTimeout) as info:
        fleet.launch(SPEC)
    instance_id = info.value.instance_id
    assert fleet.get(instance_id).state is S.CREATING
    healed = fleet.refresh(instance_id)
    assert healed.provider_instance_id == "sim-000001"
    assert healed.state in (S.CREATED, S.STARTING)


def test_spec_errors_name_the_field_and_write_nothing(fleet: Fleet,
                                                      store: SqlInstanceStore) -> None:
    with pytest.raises(ValidationError) as info:
        fleet.launch({**SPEC, "gpu_count": 0})
    assert info.value.field == "gpu_count"
    with pytest.raises(ValidationError, match="instance_type: unknown type"):
        fleet.launch({**SPEC, "instance_type": "gpu_99x_dream"})
    with pytest.raises(ValidationError, match="provider: no adapter for 'nope'"):
        fleet.launch({**SPEC, "provider": "nope"})
    with pytest.raises(ValidationError) as extra:
        fleet.launch({**SPEC, "colour": "blue"})
    assert extra.value.field == "colour"
    assert store.list() == []


# -- terminate -----------------------------------------------------------------------------


def test_terminate_is_idempotent(fleet: Fleet, cloud: SimulatedCloud) -> None:
    instance_id = running(fleet)
    first = fleet.terminate(instance_id)
    assert first.state is S.TERMINATING
    again = fleet.terminate(instance_id)  # re-issues while still TERMINATING
    assert again.state is S.TERMINATING and again.version == first.version + 1
    done = fleet.wait_for(instance_id, S.TERMINATED, timeout=600)
    calls = Counter(cloud.calls)
    assert fleet.terminate(instance_id) == done and cloud.calls == calls


def test_terminate_that_fails_keeps_terminating(fleet: Fleet, cloud: SimulatedCloud) -> None:
    instance_id = running(fleet)
    cloud.fail_next("terminate", "unavailable")
    with pytest.raises(ProviderUnavailable):
        fleet.terminate(instance_id)
    rec = fleet.get(instance_id)
    assert rec.state is S.TERMINATING and rec.billable  # never TERMINATED on hope
    assert "ProviderUnavailable" in (rec.last_error or "")
    assert len(cloud.live_instances()) == 1


def test_terminated_only_when_the_provider_confirms(fleet: Fleet, cloud: SimulatedCloud) -> None:
    instance_id = running(fleet)
    fleet.terminate(instance_id)
    cloud.fail_next("get", "unavailable", times=3)
    for _ in range(3):
        assert fleet.refresh(instance_id).state is S.TERMINATING  # unknown changes nothing
    cloud.settle(600)
    assert fleet.refresh(instance_id).state is S.TERMINATED


def test_terminate_creating_row_finds_the_instance_by_tag(fleet: Fleet,
                                                          cloud: SimulatedCloud) -> None:
    cloud.fail_next("launch", "timeout", after_work=True)
    cloud.fail_next("list", "unavailable")
    with pytest.raises(ProviderTimeout) as info:
        fleet.launch(SPEC)
    rec = fleet.terminate(info.value.instance_id)
    assert rec.provider_instance_id == "sim-000001"
    fleet.wait_for(rec.id, S.TERMINATED, timeout=600)
    assert cloud.live_instances() == []


# -- observations ------------------------------------------------------------------------


def test_dead_instance_fails_billable_then_restart_cures_it(fleet: Fleet,
                                                            cloud: SimulatedCloud) -> None:
    instance_id = running(fleet)
    cloud.kill(fleet.get(instance_id).provider_instance_id or "")
    rec = fleet.refresh(instance_id)
    assert (rec.state, rec.billable, rec.last_raw_status) == (S.FAILED, True, "unhealthy")
    with pytest.raises(WaitFailed, match="RUNNING cannot follow"):
        fleet.wait_for(instance_id, S.RUNNING, timeout=600)
    fleet.restart(instance_id)
    assert fleet.wait_for(instance_id, S.RUNNING, timeout=600).state is S.RUNNING


def test_unknown_raw_status_changes_nothing_and_is_logged(
        fleet: Fleet, cloud: SimulatedCloud, caplog: pytest.LogCaptureFixture) -> None:
    instance_id = running(fleet)
    cloud.set_raw_status(fleet.get(instance_id).provider_instance_id or "", "zz-new-status")
    with caplog.at_level(logging.WARNING, logger="gpufsm.fleet"):
        rec = fleet.refresh(instance_id)
    assert rec.state is S.RUNNING and rec.last_raw_status == "zz-new-status"
    assert "zz-new-status" in caplog.text


def test_observation_without_an_edge_is_drift_recorded_once(fleet: Fleet) -> None:
    instance_id = running(fleet)
    fleet.terminate(instance_id)
    weird = ProviderInstance("sim-000001", "provisioning", S.CREATED)
    for _ in range(3):
        rec = fleet.observe(instance_id, Observation.present(weird))
    assert rec.state is S.TERMINATING
    (drift,) = fleet.drift(instance_id)
    assert (drift.state, drift.event, drift.raw_status) == (
        S.TERMINATING, Event.OBSERVED_CREATED, "provisioning")


def test_absence_counts_only_when_confirmed(fleet: Fleet, clock: FakeClock) -> None:
    instance_id = running(fleet)
    clock.advance(DEFAULT_VISIBILITY_WINDOW)  # past it, a not-found is believed
    rec = fleet.observe(instance_id, Observation.absent(confirmed=False, reason="one listing"))
    assert rec.state is S.RUNNING
    rec = fleet.observe(instance_id, Observation.unknown("listing failed"))
    assert rec.state is S.RUNNING
    rec = fleet.observe(instance_id, Observation.absent(confirmed=True, reason="404"))
    assert (rec.state, rec.billable) == (S.TERMINATED, False)


def test_stale_reading_after_a_command_is_not_news(fleet: Fleet, clock: FakeClock) -> None:
    instance_id = running(fleet)
    fleet.stop(instance_id)
    still = ProviderInstance("sim-000001", "running", S.RUNNING)
    assert fleet.observe(instance_id, Observation.present(still)).state is S.STOPPING
    clock.advance(fleet.command_grace + 1)  # past the grace: the stop did not take
    assert fleet.observe(instance_id, Observation.present(still)).state is S.RUNNING


def test_refused_command_is_corrected_at_once(fleet: Fleet, cloud: SimulatedCloud) -> None:
    instance_id = running(fleet)
    cloud.fail_next("stop", "invalid")
    with pytest.raises(Exception, match="injected invalid"):
        fleet.stop(instance_id)
    assert fleet.get(instance_id).state is S.RUNNING  # provider's view, no grace
    assert path(fleet, instance_id)[-2:] == ["stop>STOPPING", "observed_running>RUNNING"]


def test_vanished_instance_is_confirmed_gone(fleet: Fleet, cloud: SimulatedCloud,
                                            clock: FakeClock) -> None:
    instance_id = running(fleet)
    clock.advance(DEFAULT_VISIBILITY_WINDOW)
    cloud.vanish("sim-000001")
    rec = fleet.refresh(instance_id)
    assert rec.state is S.TERMINATED and rec.billable is False


# -- waiting and sessions ----------------------------------------------------------------


def test_wait_for_times_out_with_progress(fleet: Fleet, clock: FakeClock) -> None:
    rec = fleet.launch(SPEC)
    seen: list[S] = []
    with pytest.raises(WaitTimeout) as info:
        fleet.wait_for(rec.id, S.STOPPED, timeout=30, poll_interval=10,
                       on_progress=lambda r: seen.append(r.state))
    assert info.value.wanted == "STOPPED"
    assert len(seen) == 4 and clock.monotonic() == pytest.approx(30)
    with pytest.raises(ValueError, match="at least one"):
        fleet.wait_for(rec.id, [], timeout=1)


def test_session_terminates_even_when_the_body_fails(fleet: Fleet,
                                                     cloud: SimulatedCloud) -> None:
    class Boom(Exception):
        pass

    seen: list[InstanceRecord] = []

    def body() -> None:
        with fleet.session(SPEC, timeout=600) as rec:
            seen.append(rec)
            raise Boom

    with pytest.raises(Boom):
        body()
    (rec,) = seen
    assert rec.state is S.RUNNING
    assert fleet.get(rec.id).state in (S.TERMINATING, S.TERMINATED)
    cloud.settle()
    assert fleet.refresh(rec.id).state is S.TERMINATED


def test_session_cleanup_failure_is_logged_not_raised(
        fleet: Fleet, cloud: SimulatedCloud, caplog: pytest.LogCaptureFixture) -> None:
    with fleet.session(SPEC, timeout=600) as rec:
        cloud.fail_next("terminate", "unavailable", times=5)
    assert fleet.get(rec.id).state is S.TERMINATING
    assert "reconciler will retry" in caplog.text


def test_a_quick_restart_is_not_held_up_by_the_grace_window(fleet: Fleet, cloud: SimulatedCloud,
                                                            clock: FakeClock) -> None:
    instance_id = running(fleet)
    fleet.restart(instance_id)
    rebooting = ProviderInstance("sim-000001", "rebooting", S.STARTING)
    running_again = ProviderInstance("sim-000001", "running", S.RUNNING)
    assert fleet.observe(instance_id, Observation.present(rebooting)).state is S.STARTING
    clock.advance(5)  # well inside the grace window
    assert fleet.observe(instance_id, Observation.present(running_again)).state is S.RUNNING


def test_a_launch_in_doubt_then_terminated_is_terminated_when_it_turns_up(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    cloud.fail_next("launch", "timeout", after_work=True)
    cloud.fail_next("list", "unavailable", times=2)  # the tag search fails, twice
    with pytest.raises(ProviderTimeout) as info:
        fleet.launch(SPEC)
    instance_id = info.value.instance_id
    assert instance_id is not None
    rec = fleet.terminate(instance_id)
    assert (rec.state, rec.provider_instance_id) == (S.TERMINATING, None)
    rec = fleet.refresh(instance_id)  # the listing works again: there it is
    assert rec.provider_instance_id == "sim-000001"
    assert cloud.instance("sim-000001").phase in ("terminating", "terminated")
    cloud.settle()
    assert fleet.refresh(instance_id).state is S.TERMINATED
    assert cloud.live_instances() == []
