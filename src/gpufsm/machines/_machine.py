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
    """The model ``transitions`` fires on: the state, and what the guard callback needs.

    One is made per ``check``; the guard context itself is built only when a command's
    edge asks for it, so an observation (an unguarded edge) costs no context at all.
    """

    __slots__ = ("capabilities", "event", "guards", "instance", "instance_id", "refusal",
                 "state")

    def __init__(self, instance_id: str, state: InstanceState, event: Event,
                 capabilities: Capabilities, *, guards: Sequence[Guard], instance: object
                 ) -> None:
        self.instance_id = instance_id
        self.state = state
        self.event = event
        self.capabilities = capabilities
        self.guards = guards
        self.instance = instance
        self.refusal: str | None = None


def _guards_allow(event_data: Any) -> bool:
    """The one condition on every command edge: the provider's capability, then policy."""
    token: _Token = event_data.model
    needed = _CAPABILITY_FOR.get(token.event)
    if needed is not None and not getattr(token.capabilities, needed[0]):
        token.refusal = needed[1]
        return False
    if token.guards:
        ctx = GuardContext(token.instance_id, _STATE_OF[event_data.state.name],
                           token.event, token.capabilities, token.instance)
        for guard in token.guards:
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
#: Each event's ``trigger`` on the shared machine, and each state by its name: plain dict
#: reads where ``MACHINE.events[event.value]`` and ``InstanceState(name)`` (an enum's
#: value lookup, ~0.4 µs) cost a tenth of ``check`` between them.
_TRIGGER: dict[Event, Callable[[_Token], bool]] = {
    e: MACHINE.events[e.value].trigger for e in Event if e.value in MACHINE.events}
_STATE_OF: dict[str, InstanceState] = {s.value: s for s in InstanceState}


def check(
    instance_id: str,
    state: InstanceState,
    event: Event,
    *,
    capabilities: Capabilities = Capabilities(),
    guards: Sequence[Guard] = (),
    instance: object = None,
) -> InstanceState:
    """Fire ``event`` from ``state`` on the ``transitions`` machine; the destination, or raise.

    Raises TransitionNotAllowed naming the reason: no such edge from this state, a
    missing provider capability, or a policy guard's own words. Pure: no I/O, no writes;
    the state lives on a throw-away token, and the caller persists the destination.
    KeyError for ``launch``, which creates a row rather than moving one.
    """
    token = _Token(instance_id, state, event, capabilities, guards=guards, instance=instance)
    try:
        moved = _TRIGGER[event](token)
    except MachineError:
        raise TransitionNotAllowed(
            instance_id, state.value, event.value, f"no {event.value} edge from {state.value}"
        ) from None
    if not moved:
        raise TransitionNotAllowed(
            instance_id, state.value, event.value, token.refusal or "refused by a guard"
        )
    return _STATE_OF[token.state]
