"""check()'s shortcut equals firing the transitions machine, answer for answer.

The shortcut (a dict read off MACHINE) exists for speed alone: every state, event,
capability and guard answer must give the same destination, the same refusal text,
the same guard calls with the same context, and the same exception from a guard.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from transitions import Machine

from gpufsm.errors import TransitionNotAllowed
from gpufsm.machines import TRANSITIONS, Capabilities, Event, GuardContext, InstanceState
from gpufsm.machines import _machine as machine_module
from gpufsm.machines._machine import MACHINE, _build, _shortcut, _trigger, check

CAPABILITIES = [Capabilities(stop=s, restart=r) for s, r in itertools.product((True, False),
                                                                              repeat=2)]


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


def test_the_shortcut_is_in_use() -> None:
    assert machine_module._SHORTCUT is not None
    assert len(machine_module._SHORTCUT) == sum(len(t.sources) for t in TRANSITIONS)


@pytest.mark.parametrize("state", list(InstanceState))
def test_every_answer_equals_the_machine(state: InstanceState) -> None:
    compared = 0
    for event, caps, guard_kind in itertools.product(Event, CAPABILITIES,
                                                     ("none", "allow", "refuse", "explode")):
        fast = _outcome(check, state, event, caps, guard_kind)
        slow = _outcome(_trigger, state, event, caps, guard_kind)
        assert fast == slow, (state, event, caps, guard_kind)
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


def test_a_machine_with_any_other_callback_gets_no_shortcut() -> None:
    assert _shortcut(MACHINE) is not None
    with_callback = _build(TRANSITIONS)
    with_callback.events["stop"].transitions["RUNNING"][0].after.append(lambda e: None)
    assert _shortcut(with_callback) is None
    entering = _build(TRANSITIONS)
    entering.states["FAILED"].on_enter.append(lambda e: None)
    assert _shortcut(entering) is None
    hooked = _build(TRANSITIONS)
    hooked.before_state_change = [lambda e: None]
    assert _shortcut(hooked) is None
    unless = Machine(model=None, states=["A", "B"], initial=None, send_event=True,
                     transitions=[{"trigger": "go", "source": "A", "dest": "B",
                                   "unless": [lambda e: False]}], auto_transitions=False)
    assert _shortcut(unless) is None
