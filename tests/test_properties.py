"""Property tests: random commands, observations, clock jumps and cloud faults.

After every step: each history row is an edge of the table, versions run without gaps,
TERMINATED is absorbing, and the row equals what the engine returned. At teardown,
after terminating everything and letting the cloud settle: nothing of ours is left.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from gpufsm import (
    Fleet,
    GpufsmError,
    InstanceRecord,
    InstanceState,
    ProviderError,
    TransitionNotAllowed,
)
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants

S = InstanceState
LAUNCH_FAULTS = [None, None, None, "capacity", "credit", "unavailable", "timeout"]
OP_FAULTS = ["unavailable", "timeout", "invalid", "rate_limit"]
TEMPORARY = {"unavailable", "timeout", "rate_limit"}  # only these may follow done work


class FleetMachine(RuleBasedStateMachine):
    store: SqlInstanceStore  # set per test run, shared by its examples

    instances = Bundle("instances")

    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock()
        # examples share the database, so each cloud numbers its instances apart
        self.cloud = SimulatedCloud("sim", clock=self.clock, seed=0,
                                    id_prefix=f"sim-{uuid.uuid4().hex[:8]}-")
        self.fleet = Fleet(self.store, [self.cloud], clock=self.clock, actor="prop")
        self.ids: list[str] = []
        self.terminated: set[str] = set()

    def _matches_store(self, rec: InstanceRecord) -> None:
        assert self.store.get(rec.id) == rec, "engine and store disagree"

    @rule(target=instances, fault=st.sampled_from(LAUNCH_FAULTS),
          after_work=st.booleans())
    def launch(self, fault: str | None, after_work: bool) -> str:
        if fault is not None:
            self.cloud.fail_next("launch", fault, after_work=after_work and fault in TEMPORARY)
        try:
            rec = self.fleet.launch({"provider": "sim", "instance_type": "gpu_1x_a10"})
        except ProviderError as exc:
            assert exc.instance_id is not None
            self.ids.append(exc.instance_id)
            return exc.instance_id
        self._matches_store(rec)
        self.ids.append(rec.id)
        return rec.id

    @rule(instance=instances, command=st.sampled_from(["start", "stop", "restart",
                                                       "terminate"]))
    def command(self, instance: str, command: str) -> None:
        before = self.store.get(instance)
        history = len(self.store.history(instance))
        calls = sum(self.cloud.calls.values())
        try:
            rec = getattr(self.fleet, command)(instance)
        except TransitionNotAllowed:
            # refused: nothing written, nothing called
            assert self.store.get(instance) == before
            assert len(self.store.history(instance)) == history
            assert sum(self.cloud.calls.values()) == calls
            return
        except ProviderError:
            return
        self._matches_store(rec)

    @rule(instance=instances)
    def refresh(self, instance: str) -> None:
        self._matches_store(self.fleet.refresh(instance))

    @rule(seconds=st.floats(min_value=0, max_value=120))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(instance=instances, fault=st.sampled_from(["kill", "preempt", "vanish", "weird"]))
    def cloud_fault(self, instance: str, fault: str) -> None:
        pid = self.store.get(instance).provider_instance_id
        if pid is None:
            return
        try:
            if fault == "kill":
                self.cloud.kill(pid)
            elif fault == "preempt":
                self.cloud.preempt(pid)
            elif fault == "vanish":
                self.cloud.vanish(pid)
            else:
                self.cloud.set_raw_status(pid, "zz-never-seen")
        except KeyError:
            pass  # already gone from the cloud

    @rule(op=st.sampled_from(["get", "list", "start", "stop", "restart", "terminate"]),
          error=st.sampled_from(OP_FAULTS), after_work=st.booleans())
    def call_fault(self, op: str, error: str, after_work: bool) -> None:
        self.cloud.fail_next(op, error, after_work=after_work and error in TEMPORARY)

    @rule()
    def engine_restarts(self) -> None:
        """A new process: same database and cloud, fresh engine (locks, caches gone)."""
        self.fleet = Fleet(self.store, [self.cloud], clock=self.clock, actor="prop-2")

    @rule(instance=consumes(instances))
    def forget(self, instance: str) -> None:
        """Stop picking this instance for rules; it stays tracked for the final checks."""

    @invariant()
    def invariants_hold(self) -> None:
        if not hasattr(self, "fleet"):
            return
        assert check_invariants(self.store, self.ids) == []
        for instance_id in self.ids:
            state = self.store.get(instance_id).state
            if instance_id in self.terminated:
                assert state is S.TERMINATED, "TERMINATED is absorbing"
            if state is S.TERMINATED:
                self.terminated.add(instance_id)

    def teardown(self) -> None:
        if not hasattr(self, "fleet"):
            return
        self.cloud.clear_faults()
        for _ in range(5):
            for instance_id in self.ids:
                with contextlib.suppress(GpufsmError):
                    self.fleet.terminate(instance_id)
            self.cloud.settle(3600)
            for instance_id in self.ids:
                self.fleet.refresh(instance_id)
        assert self.cloud.live_instances() == [], "an instance of ours is left on the cloud"
        for instance_id in self.ids:
            rec = self.store.get(instance_id)
            if rec.provider_instance_id is not None:
                assert rec.state is S.TERMINATED, rec
        assert check_invariants(self.store, self.ids) == []


@pytest.mark.parametrize("examples", [60])
def test_random_lifecycles_keep_every_invariant(store: SqlInstanceStore, store_url: str,
                                                examples: int) -> None:
    runs = examples if store_url.startswith("sqlite") else examples // 3
    FleetMachine.store = store
    run_state_machine_as_test(FleetMachine, settings=settings(
        max_examples=runs, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
