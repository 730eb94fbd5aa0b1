"""One module-level ``transitions`` Machine built from the table, shared by every instance.

Why one machine and no models: a Machine per instance costs ~60 kB and a quadratic
``add_model``; 100k instances would take minutes and gigabytes. With ``model=None`` the
state lives on a throw-away token and the persisted row is the truth, so a loaded row is
usable at once. Nothing here does I/O: the engine fires an event, commits, then calls the
provider, and feeds the answer back as an observation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transitions import Machine, MachineError

from gpufsm.errors import TransitionNotAllowed
from gpufsm.machines._states import EdgeKind, Event, InstanceState
from gpufsm.machines._table import TRANSITIONS, Transition

__all__ = [
    "MACHINE",
    "Capabilities",
    "Guard",
    "GuardContext",
    "check",
]

# INFO logging inside transitions cuts throughput four-fold and says nothing we don't.
logging.getLogger("transitions").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do. A command it cannot do is refused before any call."""

    stop: bool = True  # stop and start (Lambda Cloud has neither)
    restart: bool = True
    tags: bool = False  # the provider stores our ownership tag natively (else: in the name)


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What a guard may look at. ``instance`` is whatever the caller passed (a record)."""

    instance_id: str
    state: InstanceState
    event: Event
    capabilities: Capabilities
    instance: object = None


#: A policy guard returns None to allow, or a human-readable reason to refuse.
Guard = Callable[[GuardContext], "str | None"]

_CAPABILITY_FOR: dict[Event, tuple[str, str]] = {
    Event.START: ("stop", "the provider cannot stop or start instances"),
    Event.STOP: ("stop", "the provider cannot stop instances; terminate it instead"),
    Event.RESTART: ("restart", "the provider cannot restart instances"),
}


class _Token:
    """The minimum ``transitions`` needs as a model: a state attribute."""

    __slots__ = ("refusal", "state")

    def __init__(self, state: InstanceState) -> None:
        self.state = state
        self.refusal: str | None = None


def _guards_allow(event_data: Any) -> bool:
    token: _Token = event_data.model
    ctx: GuardContext = event_data.kwargs["ctx"]
    guards: Sequence[Guard] = event_data.kwargs["guards"]
    needed = _CAPABILITY_FOR.get(ctx.event)
    if needed is not None and not getattr(ctx.capabilities, needed[0]):
        token.refusal = needed[1]
        return False
    for guard in guards:
        reason = guard(ctx)
        if reason is not None:
            token.refusal = f"refused by policy: {reason}"
            return False
    return True


def _build(table: Sequence[Transition]) -> Machine:
    edges = [
        {
            "trigger": t.event.value,
            "source": [s.value for s in t.sources],
            "dest": t.dest.value,
            "conditions": [_guards_allow] if t.kind is EdgeKind.COMMAND else [],
        }
        for t in table
        if t.sources  # launch creates the row; it is not a move between states
    ]
    return Machine(
        model=None,
        states=[s.value for s in InstanceState],
        transitions=edges,
        initial=None,
        auto_transitions=False,
        send_event=True,
    )


MACHINE: Machine = _build(TRANSITIONS)
_EVENTS = MACHINE.events

#: (state, event) → the machine's candidate edges from it, in the machine's order, as
#: (destination, guarded). Read off MACHINE itself, so the shortcut cannot drift from it.
_Candidates = tuple[tuple[InstanceState, bool], ...]
_MACHINE_HOOKS = ("before_state_change", "after_state_change", "prepare_event",
                  "finalize_event", "on_exception", "on_final")


def _shortcut(machine: Machine) -> dict[tuple[str, str], _Candidates] | None:
    """The machine's edges as a dict, or None when firing could do more than move.

    Why: ``check()`` runs for every command and observation of every instance, and
    ``Event.trigger`` builds an EventData, walks the callback lists and sets the state
    on a throw-away token: three quarters of check()'s time, for a machine whose only
    callback is ``_guards_allow``. When that holds — no state, transition or machine
    callbacks, and conditions that are exactly ``_guards_allow`` — firing an event is a
    dictionary look-up plus the guard check, which is what ``check`` then does. Any
    other machine (a callback added one day) gets None here, and every call goes
    through ``trigger`` as before.
    """
    if any(getattr(machine, hook, None) for hook in _MACHINE_HOOKS):
        return None
    if any(state.on_enter or state.on_exit for state in machine.states.values()):
        return None
    table: dict[tuple[str, str], _Candidates] = {}
    for name, ev in machine.events.items():
        for source, edges in list(ev.transitions.items()):
            candidates = []
            for t in edges:
                if t.prepare or t.before or t.after or t.dest is None:
                    return None
                if any(c.func is not _guards_allow or not c.target for c in t.conditions):
                    return None
                candidates.append((InstanceState(t.dest), bool(t.conditions)))
            table[(source, name)] = tuple(candidates)
    return table


_SHORTCUT = _shortcut(MACHINE)


def check(
    instance_id: str,
    state: InstanceState,
    event: Event,
    *,
    capabilities: Capabilities = Capabilities(),
    guards: Sequence[Guard] = (),
    instance: object = None,
) -> InstanceState:
    """Fire ``event`` from ``state`` in memory and return the destination, or raise.

    Raises TransitionNotAllowed naming the reason: no such edge from this state, a
    missing provider capability, or a policy guard's own words. Pure: no I/O, no writes.
    """
    if _SHORTCUT is None:
        return _trigger(instance_id, state, event, capabilities=capabilities, guards=guards,
                        instance=instance)
    # What ``_EVENTS[event].trigger`` does on the shortcut machine, minus the machinery:
    # same order, same guard calls with the same context, same refusal text. The first
    # candidate edge whose guard allows (or that has none) wins; else the last refusal
    # says why. tests/test_check_fast_path.py holds the two to each other over every
    # state, event, capability and guard answer.
    candidates = _SHORTCUT.get((state, event))
    if not candidates:
        if event.value not in _EVENTS:  # launch: not a move, so not in the machine either
            raise KeyError(event.value)
        raise TransitionNotAllowed(
            instance_id, state.value, event.value, f"no {event.value} edge from {state.value}"
        )
    refusal: str | None = None
    ctx: GuardContext | None = None
    for dest, guarded in candidates:
        if not guarded:
            return dest
        needed = _CAPABILITY_FOR.get(event)
        if needed is not None and not getattr(capabilities, needed[0]):
            refusal = needed[1]
            continue
        if ctx is None:
            ctx = GuardContext(instance_id, state, event, capabilities, instance)
        for guard in guards:
            reason = guard(ctx)
            if reason is not None:
                refusal = f"refused by policy: {reason}"
                break
        else:
            return dest
    raise TransitionNotAllowed(
        instance_id, state.value, event.value, refusal or "refused by a guard"
    )


def _trigger(instance_id: str, state: InstanceState, event: Event, *,
             capabilities: Capabilities, guards: Sequence[Guard], instance: object
             ) -> InstanceState:
    """``check`` through ``transitions`` itself: the reference the shortcut must equal."""
    token = _Token(state)
    ctx = GuardContext(instance_id, state, event, capabilities, instance)
    try:
        moved = _EVENTS[event.value].trigger(token, ctx=ctx, guards=guards)
    except MachineError:
        raise TransitionNotAllowed(
            instance_id, state.value, event.value, f"no {event.value} edge from {state.value}"
        ) from None
    if not moved:
        raise TransitionNotAllowed(
            instance_id, state.value, event.value, token.refusal or "refused by a guard"
        )
    return InstanceState(token.state)
