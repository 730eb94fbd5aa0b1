"""Engine throughput in memory: gpufsm.machines.check() against what it is built on.

The workload is the same for all three contenders: ``instances`` instances walk, in
lock-step, a five-event cycle that returns where it started and touches every guarded
command with a capability (restart, stop, start) plus the observations between them::

    RUNNING -restart!-> STARTING -stop!-> STOPPING -observed_stopped-> STOPPED
            -start!-> STARTING -observed_running-> RUNNING

Commands carry the capability check and one policy guard; observations carry none,
exactly as in the table. Each contender keeps its own per-instance state the way its
library intends: gpufsm gets a state and returns the next (the row is the truth), raw
``transitions`` keeps one small model object per instance on one shared machine, and
python-statemachine keeps one machine per instance.

A workload call fires whole *passes* (one event on every instance) and carries on where
the last call stopped, so the harness may cut a round into pieces taken turn about with
the baseline (``SLICES``: both libraries then run under the same neighbours; see
``harness.paired_rates``). Whenever a workload has fired whole cycles, every instance
must be back in RUNNING: a library that ignored an event fails the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness import CPU, Pair, paired_rates

from gpufsm.machines import (
    TRANSITIONS,
    Capabilities,
    EdgeKind,
    Event,
    GuardContext,
    InstanceState,
    check,
)

__all__ = ["CYCLE", "EngineResult", "run_engine"]

S = InstanceState
E = Event

CYCLE: tuple[Event, ...] = (
    E.RESTART, E.STOP, E.OBSERVED_STOPPED, E.START, E.OBSERVED_RUNNING,
)

#: Nobody is blocked: the guard is evaluated every time and always allows, so the
#: benchmark measures the cost of asking, not of refusing.
_BLOCKED: frozenset[str] = frozenset({"never-an-instance"})

# Which capability each guarded command needs; the same map gpufsm keeps privately.
_CAPABILITY_FOR = {E.START.value: "stop", E.STOP.value: "stop", E.RESTART.value: "restart"}


#: Pieces per round and side, taken turn about (see the module docstring).
SLICES = 5


class _Cursor:
    """Where a workload is in the cycle, across calls: passes fired so far."""

    __slots__ = ("passes",)

    def __init__(self) -> None:
        self.passes = 0

    def events(self, n: int, k: int) -> list[tuple[Event, bool]]:
        """The events of the next ``n // k`` passes, each with "a cycle ends here"."""
        out = []
        for _ in range(n // k):
            self.passes += 1
            out.append((CYCLE[(self.passes - 1) % len(CYCLE)],
                        self.passes % len(CYCLE) == 0))
        return out


def policy_guard(ctx: GuardContext) -> str | None:
    """A gpufsm policy guard: refuse blocked instances (none are)."""
    return "instance is blocked" if ctx.instance_id in _BLOCKED else None


@dataclass(frozen=True)
class EngineResult:
    vs_transitions: Pair
    vs_statemachine: Pair | None
    statemachine_error: str | None
    instances: int


def _gpufsm(ids: Sequence[str]) -> Callable[[int], None]:
    caps = Capabilities()
    guards = (policy_guard,)
    states = [S.RUNNING] * len(ids)
    k = len(ids)
    cursor = _Cursor()

    def work(n: int) -> None:
        for event, cycle_done in cursor.events(n, k):
            for i in range(k):
                states[i] = check(ids[i], states[i], event, capabilities=caps, guards=guards)
            if cycle_done:
                assert all(s is S.RUNNING for s in states), "a cycle must end where it began"

    return work


class _Model:
    """What a raw ``transitions`` user fires on with ``model=None``: id and state."""

    __slots__ = ("id", "state")

    def __init__(self, instance_id: str, state: str) -> None:
        self.id = instance_id
        self.state = state


def _raw_transitions(ids: Sequence[str]) -> Callable[[int], None]:
    from transitions import Machine

    caps = Capabilities()

    def allowed(event_data: Any) -> bool:
        """The same two checks gpufsm makes: the provider's capability, then policy."""
        needed = _CAPABILITY_FOR.get(event_data.event.name)
        if needed is not None and not getattr(caps, needed):
            return False
        return event_data.model.id not in _BLOCKED

    machine = Machine(
        model=None,
        states=[s.value for s in InstanceState],
        transitions=[
            {
                "trigger": t.event.value,
                "source": [s.value for s in t.sources],
                "dest": t.dest.value,
                "conditions": [allowed] if t.kind is EdgeKind.COMMAND else [],
            }
            for t in TRANSITIONS
            if t.sources
        ],
        initial=None,
        auto_transitions=False,
        send_event=True,
    )
    models = [_Model(i, S.RUNNING.value) for i in ids]
    triggers = {e: machine.events[e.value].trigger for e in CYCLE}
    k = len(ids)
    cursor = _Cursor()

    def work(n: int) -> None:
        for event, cycle_done in cursor.events(n, k):
            trigger = triggers[event]
            for m in models:
                if not trigger(m):
                    raise AssertionError("a guard refused a legal command")
            if cycle_done:
                assert all(m.state == S.RUNNING.value for m in models)

    return work


def statemachine_class() -> type[Any]:
    """The table as a python-statemachine class, built at run time from the same data."""
    from statemachine import State, StateMachine

    caps = Capabilities()

    def allowed(event: str, model: _Model) -> bool:
        needed = _CAPABILITY_FOR.get(str(event))
        if needed is not None and not getattr(caps, needed):
            return False
        return model.id not in _BLOCKED

    states = {
        s: State(s.value, value=s.value, initial=s is S.CREATING, final=s is S.TERMINATED)
        for s in InstanceState
    }
    attrs: dict[str, Any] = {s.value.lower(): states[s] for s in InstanceState}
    for t in TRANSITIONS:
        if not t.sources:
            continue
        extra: dict[str, Any] = {"cond": allowed} if t.kind is EdgeKind.COMMAND else {}
        edges = [states[src].to(states[t.dest], **extra) for src in t.sources]
        combined = edges[0]
        for more in edges[1:]:
            combined = combined | more
        attrs[t.event.value] = combined
    return type("GpufsmLifecycle", (StateMachine,), attrs)


class _PsmModel:
    __slots__ = ("id", "state")

    def __init__(self, instance_id: str) -> None:
        self.id = instance_id
        self.state: str | None = None


def _statemachine(ids: Sequence[str]) -> Callable[[int], None]:
    cls = statemachine_class()
    machines = [cls(_PsmModel(i), start_value=S.RUNNING.value) for i in ids]
    k = len(ids)
    cursor = _Cursor()

    def work(n: int) -> None:
        for event, cycle_done in cursor.events(n, k):
            name = event.value
            for m in machines:
                m.send(name)
            if cycle_done:
                assert all(m.model.state == S.RUNNING.value for m in machines), (
                    "python-statemachine ignored an event (a guard refused or no edge)")

    return work


def run_engine(*, instances: int, seconds: float, rounds: int) -> EngineResult:
    ids = [f"inst-{i:06d}" for i in range(instances)]
    step = instances  # whole passes; each workload checks its cycles as they complete
    subject = _gpufsm(ids)
    # CPU time: all three are pure computation in this one thread
    vs_raw = paired_rates(subject, _raw_transitions(ids), seconds=seconds, rounds=rounds,
                          step=step, clock=CPU, slices=SLICES)
    try:
        baseline = _statemachine(ids)
    except ImportError as exc:
        return EngineResult(vs_raw, None, f"python-statemachine not installed ({exc.name})",
                            instances)
    vs_psm = paired_rates(subject, baseline, seconds=seconds, rounds=rounds, step=step,
                          clock=CPU, slices=SLICES)
    return EngineResult(vs_raw, vs_psm, None, instances)
