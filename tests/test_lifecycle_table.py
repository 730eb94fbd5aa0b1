"""The transition table: its structural rules, every edge, guards, and its drawings."""

from __future__ import annotations

import pytest

from gpufsm.errors import DefinitionError, TransitionNotAllowed
from gpufsm.machines import (
    INITIAL_STATE,
    MACHINE,
    TRANSITIONS,
    Capabilities,
    EdgeKind,
    Event,
    GuardContext,
    InstanceState,
    Transition,
    check,
    edges_from,
    event_for_observed_state,
    reachable_by_observation,
    to_dot,
    to_mermaid,
    validate_table,
)

S = InstanceState
E = Event
K = EdgeKind
ALL_EDGES = [(src, t.event, t.dest) for t in TRANSITIONS for src in t.sources]
INDEX = edges_from()


def test_nine_states_in_lifecycle_order() -> None:
    assert [s.value for s in S] == [
        "CREATING", "CREATED", "STARTING", "RUNNING", "STOPPING", "STOPPED",
        "TERMINATING", "FAILED", "TERMINATED",
    ]


def test_every_edge_is_commented_and_kinded() -> None:
    for t in TRANSITIONS:
        assert t.comment.strip(), t
        assert isinstance(t.kind, EdgeKind)


def test_terminated_is_absorbing() -> None:
    assert all(S.TERMINATED not in t.sources for t in TRANSITIONS)
    for event in E:
        if event is E.LAUNCH:
            continue
        with pytest.raises(TransitionNotAllowed):
            check("i", S.TERMINATED, event)


@pytest.mark.parametrize(("src", "event", "dest"), ALL_EDGES,
                         ids=[f"{s}-{e}" for s, e, _ in ALL_EDGES])
def test_every_edge_fires_through_the_machine(src: S, event: E, dest: S) -> None:
    assert check("i", src, event) is dest


ILLEGAL = [(s, e) for s in S for e in E if e is not E.LAUNCH and e not in INDEX.get(s, {})]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s}-{e}" for s, e in ILLEGAL])
def test_events_without_an_edge_are_refused(state: S, event: E) -> None:
    with pytest.raises(TransitionNotAllowed) as info:
        check("inst-1", state, event)
    assert info.value.instance_id == "inst-1"
    assert info.value.state == state.value
    assert info.value.event == event.value
    assert "no " in info.value.reason


def test_launch_creates_the_row_and_is_not_a_machine_trigger() -> None:
    (launch,) = [t for t in TRANSITIONS if t.event is E.LAUNCH]
    assert launch.sources == () and launch.dest is INITIAL_STATE is S.CREATING
    assert "launch" not in MACHINE.events


def test_every_state_reaches_terminated_and_is_reachable() -> None:
    forward: dict[S, set[S]] = {}
    for src, _, dest in ALL_EDGES:
        forward.setdefault(src, set()).add(dest)
    for state in S:
        seen, todo = {state}, [state]
        while todo:
            for nxt in forward.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert S.TERMINATED in seen, f"{state} is a trap"


@pytest.mark.parametrize(("event", "missing"), [
    (E.START, "the provider cannot stop or start instances"),
    (E.STOP, "the provider cannot stop instances; terminate it instead"),
])
def test_capability_guard_names_the_reason(event: E, missing: str) -> None:
    state = S.STOPPED if event is E.START else S.RUNNING
    no_stop = Capabilities(stop=False, restart=True)
    with pytest.raises(TransitionNotAllowed) as info:
        check("i", state, event, capabilities=no_stop)
    assert info.value.reason == missing
    assert check("i", state, event) is not None  # fine where the provider can


def test_restart_needs_the_restart_capability() -> None:
    with pytest.raises(TransitionNotAllowed, match="cannot restart"):
        check("i", S.RUNNING, E.RESTART, capabilities=Capabilities(restart=False))


def test_policy_guards_see_the_context_and_can_refuse() -> None:
    seen: list[GuardContext] = []

    def budget(ctx: GuardContext) -> str | None:
        seen.append(ctx)
        return "over the hourly budget" if ctx.event is E.START else None

    record = object()
    with pytest.raises(TransitionNotAllowed, match="refused by policy: over the hourly budget"):
        check("i", S.STOPPED, E.START, guards=[budget], instance=record)
    assert seen[-1].instance is record and seen[-1].state is S.STOPPED
    assert check("i", S.RUNNING, E.STOP, guards=[budget]) is S.STOPPING


def test_observations_ignore_policy_guards() -> None:
    def deny(ctx: GuardContext) -> str:
        return "no"

    assert check("i", S.STARTING, E.OBSERVED_RUNNING, guards=[deny]) is S.RUNNING


def test_observed_state_events() -> None:
    assert event_for_observed_state(S.RUNNING) is E.OBSERVED_RUNNING
    assert event_for_observed_state(S.TERMINATED) is E.OBSERVED_GONE
    with pytest.raises(ValueError, match="CREATING"):
        event_for_observed_state(S.CREATING)


def test_reachable_by_observation_has_no_commands() -> None:
    assert reachable_by_observation(S.FAILED) == {S.FAILED, S.TERMINATING, S.TERMINATED}
    assert S.RUNNING in reachable_by_observation(S.CREATED)
    assert reachable_by_observation(S.TERMINATED) == {S.TERMINATED}


def _table_with(*extra: Transition, drop: E | None = None) -> list[Transition]:
    return [t for t in TRANSITIONS if t.event is not drop] + list(extra)


@pytest.mark.parametrize(("table", "message"), [
    (_table_with(Transition(E.START, (S.TERMINATED,), S.STARTING, K.COMMAND, "zombie")),
     "leaves TERMINATED"),
    (_table_with(drop=E.OBSERVED_GONE), r"unreachable states: .*TERMINATED"),
    (_table_with(Transition(E.STOP, (S.RUNNING,), S.STOPPED, K.COMMAND, "dup")),
     "two destinations"),
    (_table_with(Transition(E.LAUNCH, (), S.RUNNING, K.COMMAND, "second launch")),
     "exactly one source-less edge"),
    (_table_with(Transition(E.TIMED_OUT, (S.RUNNING,), S.FAILED, K.TIMEOUT, "  ")),
     "no comment"),
    ([t for t in TRANSITIONS if t.dest is not S.STOPPED], "unreachable states"),
])
def test_bad_tables_are_refused(table: list[Transition], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        validate_table(table)


def test_trap_state_is_refused() -> None:
    # STOPPED with every way out removed, but still reachable: an instance could bill forever.
    table = [Transition(t.event, tuple(s for s in t.sources if s is not S.STOPPED), t.dest,
                        t.kind, t.comment) for t in TRANSITIONS]
    table = [t for t in table if t.sources or t.event is E.LAUNCH]
    with pytest.raises(DefinitionError, match=r"trap states.*STOPPED"):
        validate_table(table)


def test_mermaid_diagram_has_exactly_the_table_edges() -> None:
    lines = to_mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    drawn = {line.strip() for line in lines[1:]}
    for src, event, dest in ALL_EDGES:
        label = f"{event.value}!" if INDEX[src][event].kind is K.COMMAND else event.value
        assert f"{src} --> {dest}: {label}" in drawn
    assert len(drawn) == len(ALL_EDGES) + 2  # launch from [*], and TERMINATED --> [*]


def test_dot_diagram_styles_edges_by_kind() -> None:
    dot = to_dot()
    assert dot.startswith("digraph gpufsm {") and dot.rstrip().endswith("}")
    assert '"RUNNING" -> "STOPPING" [label="stop", style=solid];' in dot
    assert '"STARTING" -> "RUNNING" [label="observed_running", style=dashed];' in dot
    assert '"STARTING" -> "FAILED" [label="timed_out", style=dotted];' in dot
