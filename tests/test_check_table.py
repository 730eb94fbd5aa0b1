"""check() fires the ``transitions`` machine built from the table; every answer must be
the table's own: destination, refusal text, guard calls with their context, and a guard's
exception passed through unchanged.

The reference below reads TRANSITIONS directly (first matching edge wins; command edges
ask the provider's capability, then each policy guard in order), so a machine built or
fired differently from the table fails here for the exact state, event and guard.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from gpufsm.errors import TransitionNotAllowed
from gpufsm.machines import (
    TRANSITIONS,
    Capabilities,
    EdgeKind,
    Event,
    GuardContext,
    InstanceState,
    check,
)

CAPABILITIES = [Capabilities(stop=s, restart=r) for s, r in itertools.product((True, False),
                                                                              repeat=2)]
_NEEDS = {Event.START: ("stop", "the provider cannot stop or start instances"),
          Event.STOP: ("stop", "the provider cannot stop instances; terminate it instead"),
          Event.RESTART: ("restart", "the provider cannot restart instances")}


class Boom(Exception):
    pass


def _guards(kind: str, calls: list[GuardContext]) -> tuple[Callable[[GuardContext],
                                                                    str | None], ...]:
    def allow(ctx: GuardContext) -> str | None:
        calls.append(ctx)
        return None

    def refuse(ctx: GuardContext) -> str | None:
        calls.append(ctx)
        return "over budget"

    def explode(ctx: GuardContext) -> str | None:
        calls.append(ctx)
        raise Boom(ctx.event.value)

    return {"none": (), "allow": (allow,), "refuse": (allow, refuse, allow),
            "explode": (explode,)}[kind]


def from_table(instance_id: str, state: InstanceState, event: Event, *,
               capabilities: Capabilities, guards: Sequence[Callable[[GuardContext],
                                                                     str | None]],
               instance: object) -> InstanceState:
    """What the table says ``check`` must answer, read without ``transitions``."""
    if event is Event.LAUNCH:
        raise KeyError(event.value)
    edges = [t for t in TRANSITIONS if t.event is event and state in t.sources]
    if not edges:
        raise TransitionNotAllowed(instance_id, state.value, event.value,
                                   f"no {event.value} edge from {state.value}")
    refusal = "refused by a guard"
    for edge in edges:
        if edge.kind is not EdgeKind.COMMAND:
            return edge.dest
        needed = _NEEDS.get(event)
        if needed is not None and not getattr(capabilities, needed[0]):
            refusal = needed[1]
            continue
        ctx = GuardContext(instance_id, state, event, capabilities, instance)
        reasons = (guard(ctx) for guard in guards)
        reason = next((r for r in reasons if r is not None), None)
        if reason is None:
            return edge.dest
        refusal = f"refused by policy: {reason}"
    raise TransitionNotAllowed(instance_id, state.value, event.value, refusal)


def _outcome(fire: Callable[..., InstanceState], state: InstanceState, event: Event,
             caps: Capabilities, guard_kind: str) -> tuple[object, ...]:
    calls: list[GuardContext] = []
    try:
        result: object = fire("inst-1", state, event, capabilities=caps,
                              guards=_guards(guard_kind, calls), instance={"row": 1})
    except TransitionNotAllowed as exc:
        result = ("refused", exc.args, str(exc))
    except Boom as exc:
        result = ("boom", exc.args)
    except KeyError as exc:  # launch is no move between states: the machine has no event
        result = ("no such event", exc.args)
    return result, calls


@pytest.mark.parametrize("state", list(InstanceState))
def test_every_answer_is_the_tables(state: InstanceState) -> None:
    compared = 0
    for event, caps, guard_kind in itertools.product(Event, CAPABILITIES,
                                                     ("none", "allow", "refuse", "explode")):
        fired = _outcome(check, state, event, caps, guard_kind)
        assert fired == _outcome(from_table, state, event, caps, guard_kind), (
            state, event, caps, guard_kind)
        compared += 1
    assert compared == len(Event) * len(CAPABILITIES) * 4


def test_refusals_read_as_before() -> None:
    with pytest.raises(TransitionNotAllowed, match="cannot stop instances"):
        check("i", InstanceState.RUNNING, Event.STOP, capabilities=Capabilities(stop=False))
    with pytest.raises(TransitionNotAllowed, match="refused by policy: nope"):
        check("i", InstanceState.RUNNING, Event.RESTART, guards=(lambda ctx: "nope",))
    with pytest.raises(TransitionNotAllowed, match="no start edge from RUNNING"):
        check("i", InstanceState.RUNNING, Event.START)
    assert check("i", InstanceState.STARTING, Event.OBSERVED_RUNNING) is InstanceState.RUNNING


def test_check_fires_the_machine_not_a_copy_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback added to the machine runs: check() goes through ``transitions``."""
    from gpufsm.machines._machine import MACHINE

    seen: list[str] = []
    monkeypatch.setattr(MACHINE, "before_state_change", [lambda e: seen.append(e.event.name)])
    check("i", InstanceState.RUNNING, Event.STOP)
    assert seen == ["stop"]
