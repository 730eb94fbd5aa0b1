"""The reconciler: sync then step, on the simulated cloud, over every store backend.

Each failure of the anchors has a test here: a hung loop on one odd row (Ray #60566),
instances created but never recorded (dstack #3453), an empty listing read as "all
gone" (SkyPilot #10517), termination given up while billing (dstack #1551).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from conftest import SPEC
from gpufsm import Fleet, InstanceState, InsufficientCredit
from gpufsm.adapters import Observation, ownership_tag
from gpufsm.fleet import DEFAULT_VISIBILITY_WINDOW
from gpufsm.reconcile import (
    OrphanPolicy,
    ReconcileConfig,
    Reconciler,
    Snapshot,
    destroy_all,
    hourly_budget,
    idle_timeout,
    insufficient_credit_emergency,
    max_lifetime,
    run_forever,
)
from gpufsm.store import InstanceRecord, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants

S = InstanceState


def running_fleet(fleet: Fleet, n: int, spec: dict[str, Any] | None = None) -> list[str]:
    """``n`` RUNNING instances, launched longer ago than the visibility window (after
    it, the provider's not-found is believed)."""
    ids = [fleet.launch(spec or SPEC).id for _ in range(n)]
    for i in ids:
        fleet.wait_for(i, S.RUNNING, timeout=600)
    fleet.clock.sleep(DEFAULT_VISIBILITY_WINDOW)
    return ids


def pid(fleet: Fleet, instance_id: str) -> str:
    value = fleet.get(instance_id).provider_instance_id
    assert value is not None
    return value


def states(fleet: Fleet, ids: list[str]) -> list[S]:
    return [fleet.get(i).state for i in ids]


def test_a_quiet_pass_lists_once_and_changes_nothing(fleet: Fleet,
                                                     cloud: SimulatedCloud) -> None:
    ids = running_fleet(fleet, 5)
    cloud.calls.clear()
    report = Reconciler(fleet).run_once()
    assert report.changes == [] and report.ok
    assert dict(cloud.calls) == {"list": 1}  # never one GET per instance
    assert report.instances_seen == 5 and report.listings["sim"] == 5
    assert states(fleet, ids) == [S.RUNNING] * 5


def test_a_dead_instance_is_failed_then_terminated(fleet: Fleet, cloud: SimulatedCloud) -> None:
    ids = running_fleet(fleet, 3)
    cloud.kill(pid(fleet, ids[1]))
    report = Reconciler(fleet).run_once()
    moves = [(c.from_state, c.to_state, c.event) for c in report.changes]
    assert moves == [("RUNNING", "FAILED", "observed_failed"),
                     ("FAILED", "TERMINATING", "terminate")]
    assert "FAILED and may still bill" in report.changes[1].why
    cloud.settle(600)
    Reconciler(fleet).run_once()
    assert states(fleet, ids) == [S.RUNNING, S.TERMINATED, S.RUNNING]


@pytest.mark.parametrize("mode", ["error", "empty"])
def test_an_outage_never_marks_anything_terminated(fleet: Fleet, cloud: SimulatedCloud,
                                                   mode: str) -> None:
    ids = running_fleet(fleet, 6)
    reconciler = Reconciler(fleet)
    cloud.calls.clear()
    cloud.outage(50, mode=mode)
    for _ in range(50):
        report = reconciler.run_once()
        assert report.changes == []
        (blind,) = report.problems_of("blind")  # six rows bill there: the pass is not ok
        assert "6 billable row(s)" in blind.message and not report.ok
    assert states(fleet, ids) == [S.RUNNING] * 6
    assert cloud.calls["get"] == 0  # an outage does not turn into a GET storm


def test_one_vanished_instance_is_confirmed_by_a_direct_get(fleet: Fleet,
                                                            cloud: SimulatedCloud) -> None:
    ids = running_fleet(fleet, 5)
    cloud.vanish(pid(fleet, ids[0]))
    cloud.calls.clear()
    report = Reconciler(fleet).run_once()
    assert fleet.get(ids[0]).state is S.TERMINATED
    assert cloud.calls["get"] == 1
    assert report.changes[0].why == "absent from the listing; GET: not found"


def test_without_gets_listings_alone_never_end_a_row_with_an_id(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    """Issue 9 item 3: a row with a provider id ends on the provider's own word only."""
    ids = running_fleet(fleet, 5)
    cloud.vanish(pid(fleet, ids[0]))
    cloud.calls.clear()
    reconciler = Reconciler(fleet, ReconcileConfig(confirm_gets_per_pass=0,
                                                   absent_listings_to_confirm=3))
    for _ in range(10):
        reconciler.run_once()
    assert fleet.get(ids[0]).state is S.RUNNING
    assert cloud.calls["get"] == 0


@pytest.mark.parametrize("live", [1, 2])
def test_empty_listings_never_end_a_few_running_rows(fleet: Fleet, cloud: SimulatedCloud,
                                                     live: int) -> None:
    """Issue 9 item 3: with GETs off, one or two RUNNING rows (below the suspicious-
    listing guard's three) and three empty 200 listings used to end them while the
    instances ran."""
    ids = running_fleet(fleet, live)
    reconciler = Reconciler(fleet, ReconcileConfig(confirm_gets_per_pass=0,
                                                   absent_listings_to_confirm=3))
    cloud.outage(3, mode="empty")
    for _ in range(3):
        reconciler.run_once()
    assert states(fleet, ids) == [S.RUNNING] * live
    assert len(cloud.live_instances()) == live


def test_a_failed_confirming_get_changes_nothing(fleet: Fleet, cloud: SimulatedCloud) -> None:
    ids = running_fleet(fleet, 4)
    cloud.vanish(pid(fleet, ids[0]))
    cloud.fail_next("get", "unavailable")
    Reconciler(fleet).run_once()
    assert fleet.get(ids[0]).state is S.RUNNING


def test_stuck_starting_times_out_to_failed_and_is_terminated(
        fleet: Fleet, cloud: SimulatedCloud, clock: FakeClock) -> None:
    rec = fleet.launch(SPEC)
    fleet.wait_for(rec.id, S.STARTING, timeout=600, poll_interval=1)
    cloud.set_raw_status(pid(fleet, rec.id), "booting")  # pinned: it never comes up
    cloud.settle(0)
    config = ReconcileConfig(deadlines={S.STARTING: 600})
    reconciler = Reconciler(fleet, config)
    reconciler.run_once()
    assert fleet.get(rec.id).state is S.STARTING
    clock.advance(601)
    report = reconciler.run_once()
    assert [c.event for c in report.changes] == ["timed_out", "terminate"]
    assert "deadline 600s" in report.changes[0].why


def test_creating_row_left_by_a_crash_is_adopted_by_tag(fleet: Fleet, store: SqlInstanceStore,
                                                        cloud: SimulatedCloud,
                                                        clock: FakeClock) -> None:
    """The process died between the provider's launch and our commit of its id."""
    token = uuid.uuid4().hex[:16]
    now = clock.now()
    row = store.insert(InstanceRecord(
        id=str(uuid.uuid4()), provider="sim", state=S.CREATING, version=1,
        client_token=token, tag=ownership_tag(token), name="crashed", billable=True,
        spec=dict(SPEC), created_at=now, updated_at=now, state_entered_at=now), actor="t")
    leaked = cloud.spawn_untracked(ownership_tag(token))
    report = Reconciler(fleet).run_once()
    rec = fleet.get(row.id)
    assert rec.provider_instance_id == leaked and rec.state is not S.CREATING
    assert report.changes[0].event == "observed_created"
    assert report.problems_of("orphan") == []


def test_creating_row_whose_instance_never_appeared_fails_after_the_deadline(
        fleet: Fleet, cloud: SimulatedCloud, clock: FakeClock) -> None:
    cloud.fail_next("launch", "timeout")  # outcome unknown, nothing was created
    with pytest.raises(Exception, match="injected timeout"):
        fleet.launch(SPEC)
    (row,) = fleet.list()
    reconciler = Reconciler(fleet, ReconcileConfig(deadlines={S.CREATING: 900},
                                                   absent_listings_to_confirm=3))
    reconciler.run_once()
    assert fleet.get(row.id).state is S.CREATING  # too early to give up
    clock.advance(901)
    reconciler.run_once()
    assert fleet.get(row.id).state is S.CREATING  # past the deadline, but 2 listings only
    reconciler.run_once()
    rec = fleet.get(row.id)
    assert (rec.state, rec.billable) == (S.FAILED, False)
    assert "no instance with tag" in (rec.last_error or "")


def test_terminate_is_never_given_up(fleet: Fleet, cloud: SimulatedCloud,
                                     clock: FakeClock) -> None:
    (instance_id,) = running_fleet(fleet, 1)
    cloud.fail_next("terminate", "unavailable", times=100)
    with pytest.raises(Exception, match="injected unavailable"):
        fleet.terminate(instance_id)
    config = ReconcileConfig(terminate_backoff=10, terminate_backoff_cap=60,
                             terminate_alert_after=4)
    reconciler = Reconciler(fleet, config)
    alerts = 0
    reissued = 0
    for _ in range(40):
        report = reconciler.run_once()
        alerts += len(report.problems_of("alert"))
        reissued += sum(c.event == "terminate" for c in report.changes)
        assert fleet.get(instance_id).state is S.TERMINATING  # never TERMINATED on hope
        clock.advance(15)
    assert alerts == 1  # raised once after the budget, and it kept trying
    assert 8 <= reissued <= 16  # backoff 10, 20, 40, 60, 60 … over 600 s
    cloud.clear_faults()
    clock.advance(60)
    reconciler.run_once()
    cloud.settle(600)
    reconciler.run_once()
    assert fleet.get(instance_id).state is S.TERMINATED
    assert cloud.live_instances() == []


@pytest.mark.parametrize("policy", list(OrphanPolicy))
def test_orphans_follow_the_configured_policy(fleet: Fleet, cloud: SimulatedCloud,
                                              policy: OrphanPolicy) -> None:
    running_fleet(fleet, 1)
    orphan = cloud.spawn_untracked(ownership_tag("feedfacecafe0001"))
    cloud.spawn_untracked(None)  # not ours: never touched
    report = Reconciler(fleet, ReconcileConfig(orphans=policy)).run_once()
    (problem,) = report.problems_of("orphan")
    assert orphan in problem.message and policy.value in problem.message
    adopted = fleet.store.find("sim", provider_instance_id=orphan)
    if policy is OrphanPolicy.REPORT:
        assert adopted is None
        return
    assert adopted is not None and adopted.tag == ownership_tag("feedfacecafe0001")
    assert fleet.history(adopted.id)[0].reason == "orphan adopted by reconciler"
    if policy is OrphanPolicy.ADOPT:
        assert adopted.state in (S.CREATED, S.STARTING)
    else:
        assert adopted.state is S.TERMINATING
        cloud.settle()
        assert orphan not in [i.id for i in cloud.live_instances()]


def test_one_odd_row_does_not_stop_the_pass(fleet: Fleet, cloud: SimulatedCloud,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ids = running_fleet(fleet, 3)
    for i in ids:
        cloud.kill(pid(fleet, i))
    real = fleet.observe

    def flaky(instance_id: str, observation: Observation, **kw: object) -> InstanceRecord:
        if instance_id == ids[0]:
            raise RuntimeError("corrupt row")
        return real(instance_id, observation, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fleet, "observe", flaky)
    report = Reconciler(fleet).run_once()
    (problem,) = report.problems_of("instance-error")
    assert problem.instance_id == ids[0] and "corrupt row" in problem.message
    assert not report.ok
    assert states(fleet, ids[1:]) == [S.TERMINATING, S.TERMINATING]


def test_rows_of_a_provider_without_adapter_are_left_alone(store: SqlInstanceStore,
                                                           clock: FakeClock) -> None:
    other = SimulatedCloud("other", clock=clock)
    Fleet(store, [other], clock=clock).launch({**SPEC, "provider": "other"})
    report = Reconciler(Fleet(store, [], clock=clock)).run_once()
    (problem,) = report.problems_of("blind")  # rows there may bill: loud, not ok
    assert problem.provider == "other" and "1 billable row(s)" in problem.message
    assert not report.ok


def test_the_reconciler_keeps_every_invariant(fleet: Fleet, cloud: SimulatedCloud,
                                              clock: FakeClock) -> None:
    ids = running_fleet(fleet, 6)
    cloud.kill(pid(fleet, ids[0]))
    cloud.preempt(pid(fleet, ids[1]))
    cloud.vanish(pid(fleet, ids[2]))
    cloud.set_raw_status(pid(fleet, ids[3]), "zz-odd")
    fleet.stop(ids[4])
    reconciler = Reconciler(fleet)
    for _ in range(10):
        reconciler.run_once()
        clock.advance(60)
    assert check_invariants(fleet.store) == []
    assert states(fleet, ids) == [S.TERMINATED, S.TERMINATED, S.TERMINATED, S.RUNNING,
                                  S.STOPPED, S.RUNNING]
    assert fleet.drift(ids[3]) == []  # unknown status: no change, no drift, just logged


# -- policies: pure functions over a snapshot --------------------------------------------


def _snap(fleet: Fleet, clock: FakeClock, **kw: object) -> Snapshot:
    return Snapshot(now=clock.now(), instances=tuple(fleet.list()), **kw)  # type: ignore[arg-type]


def test_max_lifetime(fleet: Fleet, clock: FakeClock) -> None:
    old = running_fleet(fleet, 1)[0]
    clock.advance(3000)
    young = running_fleet(fleet, 1)[0]
    actions = list(max_lifetime(3000)(_snap(fleet, clock)))
    assert [a.instance_id for a in actions] == [old]
    assert actions[0].kind == "terminate" and young not in str(actions)


def test_idle_timeout_uses_the_activity_signal(fleet: Fleet, clock: FakeClock) -> None:
    a, b = running_fleet(fleet, 2)
    clock.advance(1000)
    busy = {b: clock.now()}
    actions = list(idle_timeout(600, lambda r: busy.get(r.id), action="stop")(
        _snap(fleet, clock)))
    assert [(x.kind, x.instance_id) for x in actions] == [("stop", a)]
    with pytest.raises(ValueError, match="terminate or stop"):
        idle_timeout(1, action="explode")


def test_hourly_budget_terminates_newest_first(fleet: Fleet, clock: FakeClock) -> None:
    ids = []
    for _ in range(4):
        ids.append(running_fleet(fleet, 1)[0])
        clock.advance(10)
    actions = list(hourly_budget(1.6)(_snap(fleet, clock)))  # 4 x $0.75 = $3.00/h
    assert [a.instance_id for a in actions] == [ids[3], ids[2]]


def test_insufficient_credit_destroys_everything_there(fleet: Fleet, cloud: SimulatedCloud
                                                       ) -> None:
    ids = running_fleet(fleet, 3)
    fleet.stop(ids[2])
    cloud.credit_ok = False
    with pytest.raises(InsufficientCredit):
        fleet.launch(SPEC)
    assert fleet.credit_exhausted == {"sim"}
    report = Reconciler(fleet, policies=[insufficient_credit_emergency()]).run_once()
    assert "policy insufficient_credit: acted on 3/3" in report.notes
    assert states(fleet, ids) == [S.TERMINATING] * 3
    cloud.settle()
    Reconciler(fleet).run_once()
    assert cloud.live_instances() == []


def test_destroy_all_works_from_the_listing_when_the_database_is_lost(
        fleet: Fleet, cloud: SimulatedCloud, clock: FakeClock, tmp_path: object) -> None:
    running_fleet(fleet, 4)
    cloud.spawn_untracked(None)  # someone else's: spared
    lost = Fleet(SqlInstanceStore(f"sqlite:///{tmp_path}/fresh.db"), [cloud], clock=clock)
    cloud.fail_next("terminate", "unavailable")  # one of the four terminates fails
    seen: list[tuple[str, str | None]] = []
    result = destroy_all(lost, "sim", on_each=lambda p, e: seen.append((p, e)))
    assert (result.total, result.destroyed, len(result.failures)) == (4, 3, 1)
    assert str(result) == "Destroyed 3/4" and len(seen) == 4
    cloud.settle()
    assert len(cloud.live_instances()) == 1  # the failed one: the next run gets it
    assert destroy_all(lost, "sim").destroyed == 1
    cloud.settle()
    assert cloud.live_instances() == []
    assert len(cloud.live_instances(ours_only=False)) == 1


def test_run_forever_stops_cleanly(fleet: Fleet) -> None:
    running_fleet(fleet, 1)
    stop = threading.Event()
    reports: list[object] = []

    def on_pass(report: object) -> None:
        reports.append(report)
        if len(reports) == 3:
            stop.set()

    passes = run_forever(Reconciler(fleet), interval=0.001, stop=stop, on_pass=on_pass,
                         install_signals=False)
    assert passes == 3 == len(reports)
    assert run_forever(Reconciler(fleet), interval=0, max_passes=2,
                       install_signals=False) == 2


def test_deadlines_per_provider() -> None:
    config = ReconcileConfig(provider_deadlines={"vastai": {S.STARTING: 7200}})
    assert config.deadline("vastai", S.STARTING) == 7200
    assert config.deadline("lambda", S.STARTING) == 45 * 60
    assert config.deadline("lambda", S.RUNNING) is None


def test_reconciler_terminates_a_terminating_row_whose_instance_turns_up(
        fleet: Fleet, cloud: SimulatedCloud, clock: FakeClock) -> None:
    """A launch in doubt, terminated before the instance was seen: the row has no id."""
    cloud.fail_next("launch", "timeout", after_work=True)
    cloud.fail_next("list", "unavailable", times=2)
    with pytest.raises(Exception, match="injected timeout"):
        fleet.launch(SPEC)
    (row,) = fleet.list()
    assert fleet.terminate(row.id).provider_instance_id is None
    reconciler = Reconciler(fleet)
    for _ in range(4):
        reconciler.run_once()
        clock.advance(60)
    cloud.settle()
    reconciler.run_once()
    assert fleet.get(row.id).state is S.TERMINATED
    assert cloud.live_instances() == []


def test_a_written_off_launch_that_turns_up_is_terminated(fleet: Fleet, cloud: SimulatedCloud,
                                                          clock: FakeClock) -> None:
    """The listing hid the instance long enough to write the row off; then it appears."""
    cloud.fail_next("launch", "timeout", after_work=True)
    cloud.outage(10, mode="empty")  # the tag search and the next listings see nothing
    with pytest.raises(Exception, match="injected timeout"):
        fleet.launch(SPEC)
    (row,) = fleet.list()
    reconciler = Reconciler(fleet, ReconcileConfig(deadlines={S.CREATING: 60}))
    clock.advance(61)
    for _ in range(3):
        reconciler.run_once()
    assert (fleet.get(row.id).state, fleet.get(row.id).billable) == (S.FAILED, False)
    cloud.clear_faults()  # the listing recovers and shows our tagged instance
    report = reconciler.run_once()
    (alert,) = [p for p in report.problems_of("alert") if "finished row" in p.message]
    assert alert.instance_id == row.id
    cloud.settle()
    reconciler.run_once()
    assert cloud.live_instances() == []
