"""The transition table as data: the single source of the machine, diagram and tests.

Every edge has a one-line reason. The table is validated when this module is imported,
so a bad edit fails every test run at once instead of some transition at 3 a.m.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpufsm.errors import DefinitionError
from gpufsm.machines._states import EdgeKind, Event, InstanceState

__all__ = [
    "INITIAL_STATE",
    "OBSERVATION_EVENTS",
    "TRANSITIONS",
    "Transition",
    "edges_from",
    "event_for_observed_state",
    "reachable_by_observation",
    "validate_table",
]

S = InstanceState
E = Event
K = EdgeKind

INITIAL_STATE = S.CREATING

#: Every state except the end, i.e. where a provider resource may still exist.
_LIVE = (S.CREATED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED)


@dataclass(frozen=True, slots=True)
class Transition:
    """One edge (or one event from several sources to one destination) of the table."""

    event: Event
    sources: tuple[InstanceState, ...]  # empty only for launch, which creates the row
    dest: InstanceState
    kind: EdgeKind
    comment: str


TRANSITIONS: tuple[Transition, ...] = (
    # ---- commands -------------------------------------------------------------------
    Transition(E.LAUNCH, (), S.CREATING, K.COMMAND,
               "row committed before the provider call; its tag lets a crash be healed"),
    Transition(E.START, (S.CREATED, S.STOPPED), S.STARTING, K.COMMAND,
               "provider start; only where the adapter can stop and start"),
    Transition(E.STOP, (S.STARTING, S.RUNNING), S.STOPPING, K.COMMAND,
               "provider stop; refused where the adapter cannot stop (Lambda)"),
    Transition(E.RESTART, (S.RUNNING, S.FAILED), S.STARTING, K.COMMAND,
               "provider restart: the usual cure for an unhealthy instance"),
    Transition(E.TERMINATE, (S.CREATING, *_LIVE, S.TERMINATING), S.TERMINATING, K.COMMAND,
               "provider terminate (404 = done); from TERMINATING it re-issues the call"),
    # ---- observations ---------------------------------------------------------------
    Transition(E.OBSERVED_CREATED, (S.CREATING,), S.CREATED, K.OBSERVATION,
               "provider accepted the launch (or the reconciler found our tag): id known"),
    Transition(E.LAUNCH_FAILED, (S.CREATING,), S.FAILED, K.OBSERVATION,
               "provider refused, or the launch deadline passed with no tagged instance"),
    Transition(E.OBSERVED_STARTING, (S.CREATED, S.STOPPED, S.RUNNING), S.STARTING,
               K.OBSERVATION,
               "booting, pulling or rebooting, including starts made outside gpufsm"),
    Transition(E.OBSERVED_RUNNING, (S.CREATED, S.STARTING, S.STOPPING, S.STOPPED), S.RUNNING,
               K.OBSERVATION,
               "running; from STOPPING it means the provider refused or undid the stop"),
    Transition(E.OBSERVED_STOPPING, (S.STARTING, S.RUNNING), S.STOPPING, K.OBSERVATION,
               "stopping without our asking, e.g. Vast stops instances at zero balance"),
    Transition(E.OBSERVED_STOPPED, (S.CREATED, S.STARTING, S.RUNNING, S.STOPPING), S.STOPPED,
               K.OBSERVATION, "stopped (storage may still bill); polling may miss STOPPING"),
    Transition(E.OBSERVED_FAILED, (S.CREATED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED),
               S.FAILED, K.OBSERVATION,
               "unhealthy, exited, preempted or errored: still billable until terminated"),
    Transition(E.OBSERVED_TERMINATING, _LIVE, S.TERMINATING, K.OBSERVATION,
               "someone else (console, provider) is terminating it; wait for confirmation"),
    Transition(E.OBSERVED_GONE, (*_LIVE, S.TERMINATING), S.TERMINATED, K.OBSERVATION,
               "confirmed absent: a direct not-found, or N consecutive good listings"),
    # ---- the clock ------------------------------------------------------------------
    Transition(E.TIMED_OUT, (S.CREATED, S.STARTING, S.STOPPING), S.FAILED, K.TIMEOUT,
               "stuck past its deadline; FAILED keeps it billable so policy terminates it"),
)

#: The observation event that corresponds to "the provider says the instance is in S".
_OBSERVED: Mapping[InstanceState, Event] = {
    S.CREATED: E.OBSERVED_CREATED,
    S.STARTING: E.OBSERVED_STARTING,
    S.RUNNING: E.OBSERVED_RUNNING,
    S.STOPPING: E.OBSERVED_STOPPING,
    S.STOPPED: E.OBSERVED_STOPPED,
    S.FAILED: E.OBSERVED_FAILED,
    S.TERMINATING: E.OBSERVED_TERMINATING,
    S.TERMINATED: E.OBSERVED_GONE,
}

OBSERVATION_EVENTS: frozenset[Event] = frozenset(
    t.event for t in TRANSITIONS if t.kind is K.OBSERVATION
)


def event_for_observed_state(state: InstanceState) -> Event:
    """The observation to fire when a provider reports an instance in ``state``."""
    try:
        return _OBSERVED[state]
    except KeyError:
        raise ValueError(f"a provider cannot report {state}: it is gpufsm's own state") from None


def edges_from(
    table: Iterable[Transition] = TRANSITIONS,
) -> dict[InstanceState, dict[Event, Transition]]:
    """Index: state → event → edge, for O(1) legality checks."""
    index: dict[InstanceState, dict[Event, Transition]] = defaultdict(dict)
    for t in table:
        for src in t.sources:
            index[src][t.event] = t
    return dict(index)


def reachable_by_observation(start: InstanceState) -> frozenset[InstanceState]:
    """States the provider alone (observations, the clock) can carry ``start`` to.

    wait_for uses it to stop early: waiting for RUNNING from FAILED cannot succeed
    without a command, so there is no point polling until the timeout.
    """
    index = _INDEX
    seen = {start}
    queue = deque([start])
    while queue:
        for t in index.get(queue.popleft(), {}).values():
            if t.kind is not K.COMMAND and t.dest not in seen:
                seen.add(t.dest)
                queue.append(t.dest)
    return frozenset(seen)


def validate_table(table: Iterable[Transition]) -> None:
    """Raise DefinitionError unless the table is a sound lifecycle.

    Rules: one launch edge into the initial state; no edge leaves TERMINATED; every state
    is reachable from the initial state; TERMINATED is reachable from every state (no
    trap where an instance could bill forever); one destination per (state, event);
    every observable state has its observation event.
    """
    edges = tuple(table)
    launches = [t for t in edges if not t.sources]
    if len(launches) != 1 or launches[0].event is not E.LAUNCH or launches[0].dest != INITIAL_STATE:
        raise DefinitionError("exactly one source-less edge, launch → CREATING, is required")
    _check_edges(edges)
    forward: dict[InstanceState, set[InstanceState]] = defaultdict(set)
    backward: dict[InstanceState, set[InstanceState]] = defaultdict(set)
    for t in edges:
        for src in t.sources:
            forward[src].add(t.dest)
            backward[t.dest].add(src)
    reachable = _closure(INITIAL_STATE, forward)
    if unreachable := set(S) - reachable:
        raise DefinitionError(f"unreachable states: {sorted(unreachable)}")
    if traps := set(S) - _closure(S.TERMINATED, backward):
        raise DefinitionError(f"trap states with no way to TERMINATED: {sorted(traps)}")
    events = {t.event for t in edges}
    if missing := {e for e in _OBSERVED.values() if e not in events}:
        raise DefinitionError(f"observation events without an edge: {sorted(missing)}")


def _check_edges(edges: tuple[Transition, ...]) -> None:
    """The per-edge rules of validate_table: a comment, nothing out of TERMINATED, no
    source listed twice, one destination per (state, event)."""
    seen_pairs: dict[tuple[InstanceState, Event], InstanceState] = {}
    for t in edges:
        if not t.comment.strip():
            raise DefinitionError(f"edge {t.event} → {t.dest} has no comment")
        if S.TERMINATED in t.sources:
            raise DefinitionError(f"edge {t.event} leaves TERMINATED, which is absorbing")
        if len(set(t.sources)) != len(t.sources):
            raise DefinitionError(f"edge {t.event} lists a source twice")
        for src in t.sources:
            if (src, t.event) in seen_pairs:
                raise DefinitionError(f"{t.event} from {src} has two destinations")
            seen_pairs[(src, t.event)] = t.dest


def _closure(
    start: InstanceState, graph: Mapping[InstanceState, set[InstanceState]]
) -> set[InstanceState]:
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in graph.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


validate_table(TRANSITIONS)
_INDEX = edges_from(TRANSITIONS)
