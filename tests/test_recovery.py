"""Recovery from preemption and death: ``fleet.session(..., recovery=N)``.

What must hold: a job whose machine the provider takes back finishes on a replacement;
the job's own failure is not "recovered" (a machine the provider calls running is never
terminated on the job's word); after N replacements the run gives up naming how each
generation ended; and on every way out, Ctrl-C during a replacement's launch included,
no machine of the run is left billing. Runs on SQLite and, when GPUFSM_TEST_POSTGRES is
set, on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import SPEC
from gpufsm import Fleet, InstanceState, Recovery, RecoveryExhausted, ValidationError
from gpufsm.store import InstanceRecord, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants
from test_placement_failover import A100, TEMPLATE, billing, clouds

S = InstanceState


class JobError(Exception):
    """The job's own failure (its command exited non-zero, say)."""


def preempting(cloud: SimulatedCloud, outcomes: list[str]) -> Any:
    """A job that, on its n-th call, does what ``outcomes[n]`` says to its machine."""
    calls: list[InstanceRecord] = []

    def job(record: InstanceRecord) -> str:
        calls.append(record)
        outcome = outcomes[len(calls) - 1] if len(calls) <= len(outcomes) else "ok"
        assert record.state is S.RUNNING and record.provider_instance_id
        if outcome == "preempt":
            cloud.preempt(record.provider_instance_id)
            raise ConnectionError("ssh: connection closed by remote host")
        if outcome == "die":
            cloud.kill(record.provider_instance_id)
            raise ConnectionError("ssh: no route to host")
        if outcome == "fail":
            raise JobError("command exited 1")
        return f"done on {record.id}"

    job.calls = calls  # type: ignore[attr-defined]
    return job


def run_rows(fleet: Fleet, run_id: str) -> list[InstanceRecord]:
    return list(fleet.store.generations(run_id))


def test_a_preempted_job_finishes_on_the_second_machine(fleet: Fleet, cloud: SimulatedCloud,
                                                        clock: FakeClock) -> None:
    job = preempting(cloud, ["preempt"])
    with fleet.session(SPEC, timeout=600, recovery=2) as run:
        result = run.run(job)
        first, second = (r.id for r in job.calls)
        assert result == f"done on {second}"
        assert [r.generation for r in run_rows(fleet, run.run_id)] == [1, 2]
        assert fleet.get(first).state in (S.TERMINATING, S.TERMINATED)  # ended at once
        assert fleet.get(second).state is S.RUNNING
    rows = run_rows(fleet, run.run_id)
    assert [r.id for r in rows] == [first, second]
    assert all(r.state in (S.TERMINATING, S.TERMINATED) for r in rows)
    cloud.settle()
    assert cloud.live_instances() == []
    launch_reason = fleet.history(second)[0].reason or ""
    assert f"run {run.run_id}, generation 2" in launch_reason
    assert "generation 1 lost its machine" in launch_reason and "preempted" in launch_reason
    ended = [h.reason or "" for h in fleet.history(first) if h.to_state is S.TERMINATING]
    assert ended and f"run {run.run_id}: generation 1 lost its machine" in ended[0]
    assert check_invariants(fleet.store, [first, second]) == []


def test_a_machine_that_dies_is_replaced_too(fleet: Fleet, cloud: SimulatedCloud) -> None:
    job = preempting(cloud, ["die"])
    with fleet.session(SPEC, timeout=600, recovery=1) as run:
        assert run.run(job).startswith("done on")
    assert len(job.calls) == 2 and run.ends[0].startswith("lost its machine")


def test_the_job_s_own_failure_is_raised_and_not_recovered(fleet: Fleet,
                                                           cloud: SimulatedCloud) -> None:
    job = preempting(cloud, ["fail"])
    with pytest.raises(JobError), fleet.session(SPEC, timeout=600, recovery=3) as run:
        run.run(job)
    assert len(job.calls) == 1
    (row,) = run_rows(fleet, run.run_id)
    assert row.state in (S.TERMINATING, S.TERMINATED)


def test_recovery_gives_up_after_n_replacements_naming_each_end(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    job = preempting(cloud, ["preempt", "die", "preempt"])
    with pytest.raises(RecoveryExhausted) as info, \
            fleet.session(SPEC, timeout=600, recovery=1) as run:
        run.run(job)
    message = str(info.value)
    assert message.startswith(f"run {run.run_id}: gave up after 2 machine(s), "
                              "1 replacement(s)")
    assert "generation 1: lost its machine" in message and "'preempted'" in message
    assert "generation 2: lost its machine" in message and "'unhealthy'" in message
    assert len(job.calls) == 2
    cloud.settle()
    assert cloud.live_instances() == []


def test_a_provider_that_lags_is_given_settle_seconds(fleet: Fleet, cloud: SimulatedCloud,
                                                      clock: FakeClock) -> None:
    """The job fails while the listing still says running; the machine is reported
    preempted a little later. With ``settle`` the run waits for the word and recovers;
    without it the failure is the job's."""
    real_sleep = clock.sleep
    preempted: list[str] = []

    def sleep(seconds: float) -> None:  # the provider catches up while we wait
        if pending and not preempted:
            preempted.append(pending[0])
            cloud.preempt(pending[0])
        real_sleep(seconds)

    pending: list[str] = []
    clock.sleep = sleep  # type: ignore[method-assign]

    def job(record: InstanceRecord) -> str:
        if not pending:
            pending.append(record.provider_instance_id or "")
            raise ConnectionError("ssh: connection timed out")
        return "second"

    with fleet.session(SPEC, timeout=600, recovery=Recovery(1, settle=30)) as run:
        assert run.run(job) == "second"
    pending.clear()
    preempted.clear()
    with pytest.raises(ConnectionError), \
            fleet.session(SPEC, timeout=600, recovery=Recovery(1, settle=0)) as run:
        run.run(job)


def test_a_machine_terminated_on_purpose_is_not_replaced(fleet: Fleet,
                                                        cloud: SimulatedCloud) -> None:
    """A budget policy (or a person) ended the run's machine: a replacement would undo
    that decision, and the budget would end each replacement in turn."""
    def job(record: InstanceRecord) -> str:
        fleet.terminate(record.id, reason="policy spend_budget_run: over the cap")
        raise ConnectionError("ssh: connection closed")

    with pytest.raises(RecoveryExhausted) as info, \
            fleet.session(SPEC, timeout=600, recovery=3) as run:
        run.run(job)
    assert "was terminated on purpose (by test: policy spend_budget_run: over the cap): " \
        "not replaced" in str(info.value)
    assert len(run_rows(fleet, run.run_id)) == 1


def test_a_lost_machine_cleaned_up_by_the_reconciler_first_is_still_replaced(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    """The reconciler (terminate_failed) ended the preempted machine before the run
    looked: it terminated a loss, it did not decide to end the run."""
    def job(record: InstanceRecord) -> str:
        if record.generation == 1:
            cloud.preempt(record.provider_instance_id or "")
            fleet.refresh(record.id, grace=False)  # the reconciler's pass sees FAILED
            fleet.terminate(record.id, reason="reconciler: FAILED and billable")
            raise ConnectionError("ssh: connection closed")
        return "second"

    with fleet.session(SPEC, timeout=600, recovery=1) as run:
        assert run.run(job) == "second"
    assert run.ends[0].endswith("(FAILED, then terminated by test)")


def test_ctrl_c_while_a_replacement_is_launched_leaks_nothing(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    """The replacement's machine exists, the answer never came back (Ctrl-C inside the
    launch call): the session's ``finally`` finds its row in the store and ends it."""
    real = cloud.launch
    launches: list[str] = []

    def launch(request: Any) -> str:
        pid = real(request)
        launches.append(pid)
        if len(launches) == 2:
            raise KeyboardInterrupt
        return pid

    cloud.launch = launch  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt), \
            fleet.session(SPEC, timeout=600, recovery=2) as run:
        run.run(preempting(cloud, ["preempt"]))
    rows = run_rows(fleet, run.run_id)
    assert len(rows) == 2 and rows[1].provider_instance_id is not None  # found by its tag
    assert all(r.state in (S.TERMINATING, S.TERMINATED) for r in rows)
    cloud.settle()
    assert cloud.live_instances() == []


def test_ctrl_c_inside_a_plain_session_s_launch_leaks_nothing(
        fleet: Fleet, cloud: SimulatedCloud) -> None:
    real = cloud.launch

    def launch(request: Any) -> str:
        real(request)
        raise KeyboardInterrupt

    cloud.launch = launch  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt), fleet.session(SPEC, timeout=600):
        pytest.fail("the body must not run")
    cloud.settle()
    assert cloud.live_instances() == []
    (row,) = fleet.list()
    assert row.state in (S.TERMINATING, S.TERMINATED) and row.run_id is not None


def test_a_replacement_goes_through_placement(store_url: str) -> None:
    """Requirements given: the replacement is placed like the first machine, so a
    provider that took its machine back and is now sold out is passed over."""
    clock = FakeClock()
    store = SqlInstanceStore(store_url, migrate=True)
    sims = clouds(clock, {"alpha": 1.10, "beta": 1.20})
    fleet = Fleet(store, sims, clock=clock, actor="test")

    def job(record: InstanceRecord) -> str:
        if record.provider == "alpha":
            sims[0].preempt(record.provider_instance_id or "")
            sims[0].sell_out()
            raise ConnectionError("ssh: connection reset")
        return record.provider

    try:
        with fleet.session(A100, template=TEMPLATE, timeout=600, recovery=1) as run:
            assert run.run(job) == "beta"
        rows = run_rows(fleet, run.run_id)
        # generation 2 tried alpha again (its offer still in the minute-old catalog),
        # was refused for capacity, and failed over to beta within its placement
        assert [(r.provider, r.generation) for r in rows] == [
            ("alpha", 1), ("alpha", 2), ("beta", 2)]
        assert rows[1].state is S.FAILED and not rows[1].billable
        assert len({r.placement_id for r in rows}) == 2  # one placement per generation
        assert rows[1].placement_id == rows[2].placement_id
        clock.advance(600)
        assert billing(sims) == []
    finally:
        store.close()


def test_recovery_is_checked() -> None:
    with pytest.raises(ValidationError, match="recovery"):
        Recovery(-1)
    with pytest.raises(ValidationError, match="settle"):
        Recovery(1, settle=-5)


OUTCOME = st.sampled_from(["ok", "preempt", "die", "fail"])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(outcomes=["preempt", "preempt", "preempt", "ok"], replacements=2)
@example(outcomes=["die", "fail", "ok", "ok"], replacements=3)
@given(outcomes=st.lists(OUTCOME, min_size=4, max_size=4),
       replacements=st.integers(0, 3))
def test_a_recovering_run_keeps_at_most_one_machine_and_leaves_none(
        store_url: str, outcomes: list[str], replacements: int) -> None:
    """Whatever happens to each generation: at most one machine of the run bills at a
    time, the job runs once per generation until it succeeds, fails on its own, or
    the replacements run out, and after the session nothing of the run bills."""
    clock = FakeClock()
    store = SqlInstanceStore(store_url, migrate=True)
    cloud = SimulatedCloud("sim", clock=clock, id_prefix=f"sim-{uuid.uuid4().hex[:8]}")
    fleet = Fleet(store, [cloud], clock=clock, actor="prop")
    live_at_job: list[int] = []
    inner = preempting(cloud, outcomes)

    def job(record: InstanceRecord) -> str:
        live_at_job.append(len(cloud.live_instances()))
        result: str = inner(record)
        return result

    expected_calls = 0
    for n, outcome in enumerate(outcomes):
        expected_calls = n + 1
        if outcome in ("ok", "fail") or n == replacements:
            break
    try:
        failure = _failure(outcomes, replacements)
        with pytest.raises(failure) if failure else contextlib.nullcontext(), \
                fleet.session(SPEC, timeout=600, recovery=replacements) as run:
            run.run(job)
        assert len(inner.calls) == expected_calls
        assert live_at_job == [1] * expected_calls
        rows = run_rows(fleet, run.run_id)
        assert [r.generation for r in rows] == list(range(1, expected_calls + 1))
        assert all(not r.billable or r.state in (S.TERMINATING, S.TERMINATED) for r in rows)
        cloud.settle()
        assert cloud.live_instances() == []
        assert check_invariants(store, [r.id for r in rows]) == []
    finally:
        store.close()


def _failure(outcomes: list[str], replacements: int) -> type[Exception] | None:
    """What the run must raise: the job's own error, RecoveryExhausted, or nothing."""
    for n, outcome in enumerate(outcomes):
        if outcome == "ok":
            return None
        if outcome == "fail":
            return JobError
        if n == replacements:
            return RecoveryExhausted
    return RecoveryExhausted
