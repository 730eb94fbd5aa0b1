"""``decide``: what one observation means for one row, as data. Pure: no clock, no I/O.

Every rule that turns "the provider says X" into a write lives here, once: the
visibility window after a launch, the count of listings missing a row, the grace after
our own command (a stale reading is not news, one "failed" is not evidence), drift,
an unknown raw status, an id found by tag, price and region facts, and the health
gate. The caller supplies the time and the windows; ``apply`` (``_observe``) commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gpufsm.adapters import Observation, ObservationKind, ProviderInstance
from gpufsm.engine._decision import (
    DEBUG,
    INFO,
    NOTHING,
    WARNING,
    Decision,
    Drift,
    Health,
    Need,
    Step,
    note,
)
from gpufsm.health import GateVerdict, ProbeResult, gate_verdict
from gpufsm.machines import (
    TRANSITIONS,
    EdgeKind,
    Event,
    InstanceState,
    edges_from,
    event_for_observed_state,
)
from gpufsm.store import InstanceRecord, Move, TrackedInstance

__all__ = ["Row", "decide", "facts_after", "inside_window", "row_after", "since_accepted",
           "unchanged"]

S = InstanceState
#: A row as the caller holds it: a full record, or the slim view a reconcile pass reads.
Row = InstanceRecord | TrackedInstance
_EDGES = edges_from(TRANSITIONS)
_KIND = {t.event: t.kind for t in TRANSITIONS}
_TRACKED = frozenset(TrackedInstance._fields)
_UNREAD = object()


def decide(row: Row, observation: Observation, *, now: datetime, window: float,
           command_grace: float, grace: bool = True, health: Health | None = None
           ) -> Decision:
    """The outcome of ``observation`` for ``row`` at ``now``.

    ``window``: seconds after a launch's acceptance during which a not-found proves
    nothing. ``command_grace``: seconds after our own command during which a reading
    that repeats the old state is stale, and a "failed" is not believed; ``grace=False``
    turns both off (the provider refused the command: its view is the truth now).
    ``health``: the gate's inputs, None when not read yet (then a RUNNING report that
    reaches the gate answers ``needs=PROBES``).
    """
    if observation.kind is ObservationKind.UNKNOWN or row.state is S.TERMINATED:
        return NOTHING
    if observation.kind is ObservationKind.ABSENT:
        return _absent(row, observation, now, window)
    seen = observation.instance
    assert seen is not None
    if unchanged(row, seen):
        return NOTHING
    facts = _seen_facts(row, seen, now)
    steps: tuple[Step, ...] = ()
    if row.state is S.CREATING and seen.state is not S.TERMINATED:
        created = Step(Event.OBSERVED_CREATED, raw_status=seen.raw_status, changes={
            "provider_instance_id": seen.provider_instance_id, "accepted_at": now})
        steps = (created,)
        row = _moved(row, created, now)
    return _judge(row, seen, facts, steps,
                  clock=_Clock(now, command_grace if grace else None), health=health)


class _Clock:
    """The instant of the decision and the command grace (None: grace off)."""

    __slots__ = ("grace", "now")

    def __init__(self, now: datetime, grace: float | None) -> None:
        self.now = now
        self.grace = grace


def _absent(row: Row, observation: Observation, now: datetime, window: float) -> Decision:
    if not observation.confirmed:
        # One more good listing without it: counted on the row, so the evidence survives
        # the process (a cron --once counts as a daemon does).
        since = getattr(row, "missing_since", _UNREAD)
        if since is _UNREAD:
            return Decision(needs=Need.RECORD)
        return _facts(row, {"missing_count": row.missing_count + 1,
                            "missing_since": since or now}, ())
    if inside_window(row, now, window):
        return Decision(notes=(note(DEBUG, (
            f"{row.id}: not found {since_accepted(row, now):.0f}s after the launch was "
            "accepted, inside the visibility window: not yet visible, not gone")),))
    return _edge_or_drift(row, Event.OBSERVED_GONE, None, {}, observation.reason, steps=())


def unchanged(row: Row, seen: ProviderInstance) -> bool:
    """The provider says exactly what the row holds: the state, the raw status, and every
    fact ``_seen_facts`` would report (so ``_facts`` would find nothing to write). Most
    rows of a pass are this; the answer is the same as the full rules' (a property test
    holds the two equal), reached without building the facts. ``decide`` answers
    NOTHING for such a row, which lets a reconcile pass skip it before any Observation
    is made (tests/test_reconcile_quiet.py holds that skip to the long way)."""
    return (seen.state is row.state and row.state is not S.CREATING
            and seen.raw_status == row.last_raw_status
            and (seen.ip is None or seen.ip == row.ip)
            and not row.missing_count and row.provider_instance_id is not None
            and (seen.price_per_hour is None or seen.price_per_hour == row.price_per_hour)
            and (seen.region is None or row.region is not None))


def _seen_facts(row: Row, seen: ProviderInstance, now: datetime) -> dict[str, Any]:
    """The fields a PRESENT reading reports, whatever else it means."""
    facts: dict[str, Any] = {"last_raw_status": seen.raw_status, "last_seen_at": now}
    if seen.ip is not None:
        facts["ip"] = seen.ip
    if row.missing_count:
        facts.update(missing_count=0, missing_since=None)
    if row.provider_instance_id is None and row.state is not S.CREATING:
        # found by tag after the row moved on (a launch in doubt, then terminated):
        # keep the id, or nothing could ever terminate the instance
        facts["provider_instance_id"] = seen.provider_instance_id
        facts["accepted_at"] = row.accepted_at or now
    if seen.price_per_hour is not None:
        facts["price_per_hour"] = seen.price_per_hour
    if seen.region is not None and row.region is None:
        facts["region"] = seen.region  # where the provider placed it (Novita picks)
    return facts


def _judge(row: Row, seen: ProviderInstance, facts: dict[str, Any], steps: tuple[Step, ...],
           *, clock: _Clock, health: Health | None) -> Decision:
    if seen.state is None:
        return _facts(row, facts, steps, notes=(note(WARNING, (
            f"{row.provider} reports raw status {seen.raw_status!r} for {row.id}, which "
            f"gpufsm does not know: state left at {row.state}")),))
    if seen.state is row.state or _stale(row, seen, clock):
        return _facts(row, facts, steps)
    if seen.state is S.FAILED and _just_commanded(row, clock):
        # Inside the grace of our own command (or the launch), one "failed" reading is
        # no evidence to destroy a machine by: it waits for a reading after the grace.
        age = (clock.now - row.state_entered_at).total_seconds()
        return _facts(row, facts, steps, notes=(note(INFO, (
            f"{row.id}: {row.provider} reports {seen.raw_status!r} {age:.0f}s after our "
            "command: not taken as failed yet")),))
    if seen.state is S.RUNNING and row.state is not S.RUNNING:
        gated = _gate(row, seen, facts, steps, now=clock.now, health=health)
        if gated is not None:
            return gated
    if seen.detail:
        facts["last_error"] = seen.detail
    return _edge_or_drift(row, event_for_observed_state(seen.state), seen.raw_status, facts,
                          seen.detail, steps=steps)


def _gate(row: Row, seen: ProviderInstance, facts: dict[str, Any], steps: tuple[Step, ...],
          *, now: datetime, health: Health | None) -> Decision | None:
    """Hold an instance the provider calls running until its probes pass.

    None lets ``observed_running`` through (no probes configured, or they all passed:
    then the results ride along in ``facts``); otherwise a pending round (STARTING from
    CREATED or STOPPED, else facts), a failed gate (FAILED, billable), or a request for
    the spec and the probe results.
    """
    if health is None:
        return Decision(needs=Need.PROBES)
    spec = health.spec
    if spec is None or spec.is_empty:
        return None
    results: tuple[ProbeResult, ...] = ()
    if seen.ip is not None:
        if health.results is None:
            return Decision(needs=Need.PROBES)
        results = health.results
    since = health.running_since or now
    verdict = gate_verdict(spec, results, running_since=since, now=now)
    facts["health"] = {"running_since": since.isoformat(), "verdict": verdict.value,
                       "results": [r.to_json() for r in results]}
    if verdict is GateVerdict.PASSED:
        return None
    failing = ", ".join(f"{r.name}: {r.error_kind}" for r in results if not r.ok)
    if verdict is GateVerdict.FAILED:
        return _edge_or_drift(
            row, Event.OBSERVED_FAILED, seen.raw_status, facts,
            f"health gate failed after {spec.deadline:.0f}s: {failing or 'no address'}",
            steps=steps)
    if row.state is S.CREATED or row.state is S.STOPPED:
        return _edge_or_drift(
            row, Event.OBSERVED_STARTING, seen.raw_status, facts,
            f"provider says running; waiting for probes ({failing or 'pending'})",
            steps=steps)
    return _facts(row, facts, steps)


def _edge_or_drift(row: Row, event: Event, raw_status: str | None, facts: dict[str, Any],
                   reason: str | None, *, steps: tuple[Step, ...]) -> Decision:
    if event in _EDGES.get(row.state, {}):
        return Decision(steps=(*steps, Step(event, reason, raw_status, facts)))
    if raw_status is not None and raw_status == row.last_raw_status:
        return _facts(row, facts, steps)  # this drift is already on record
    return _facts(row, facts, steps, drift=Drift(event, raw_status, reason), notes=(note(
        INFO, f"drift on {row.id}: {event} while {row.state} (raw {raw_status!r})"),))


def _facts(row: Row, facts: dict[str, Any], steps: tuple[Step, ...], *,
           drift: Drift | None = None, notes: tuple[tuple[int, str], ...] = ()) -> Decision:
    """Write ``facts`` (all of them) only if one besides ``last_seen_at`` changed."""
    changed = False
    for name, value in facts.items():
        if name == "last_seen_at":
            continue
        current = getattr(row, name, _UNREAD)
        if current is _UNREAD:
            return Decision(needs=Need.RECORD)  # the slim row cannot tell: read it all
        if current != value:
            changed = True
            break
    if not (changed or steps or drift or notes):
        return NOTHING  # the common case of a pass: a quiet row, nothing to write
    return Decision(steps=steps, drift=drift, facts=dict(facts) if changed else None,
                    notes=notes)


def facts_after(row: Row, facts: Mapping[str, Any], at: datetime) -> Row:
    """The row as the store holds it once ``facts`` are written at ``at`` (same kind)."""
    if isinstance(row, TrackedInstance):
        return row._replace(**{k: v for k, v in facts.items() if k in _TRACKED})
    return row.with_changes(**facts, updated_at=at)


def since_accepted(row: Row, now: datetime) -> float:
    """Seconds since the provider accepted the launch (infinite when it never did)."""
    if row.accepted_at is None:
        return float("inf")
    return (now - row.accepted_at).total_seconds()


def inside_window(row: Row, now: datetime, window: float) -> bool:
    """A not-found now proves nothing: the launch was accepted too recently for every
    read of an eventually consistent provider to show the instance."""
    return since_accepted(row, now) < window


def _just_commanded(row: Row, clock: _Clock) -> bool:
    """Inside the grace of our own command, or of the launch's acceptance."""
    if clock.grace is None:
        return False
    if since_accepted(row, clock.now) < clock.grace:
        return True
    return (_KIND[row.entered_by] is EdgeKind.COMMAND
            and (clock.now - row.state_entered_at).total_seconds() < clock.grace)


def _stale(row: Row, seen: ProviderInstance, clock: _Clock) -> bool:
    """The provider still says exactly what it said before our command, inside the
    grace window: it has not acted yet. Once it has said anything else (``rebooting``
    after a restart), its next reading is news, so a quick restart is not held up."""
    return (
        clock.grace is not None
        and seen.state is row.previous_state
        and _KIND[row.entered_by] is EdgeKind.COMMAND
        and (row.last_raw_status is None or seen.raw_status == row.last_raw_status)
        and (clock.now - row.state_entered_at).total_seconds() < clock.grace
    )


def _moved(row: Row, step: Step, now: datetime) -> Row:
    """The row as it will read once ``step`` is committed at ``now``."""
    edge = _EDGES[row.state][step.event]
    return row_after(row, Move(row.id, row.version, row.state, edge.dest, step.event,
                               edge.kind, step.reason, step.raw_status, step.changes), now)


def row_after(row: Row, move: Move, at: datetime) -> Row:
    """The row as the store holds it once ``move`` is committed at ``at`` (same kind as
    given), so a batch needs no re-read of what it wrote."""
    written = move.written(at)
    if isinstance(row, TrackedInstance):
        return row._replace(**{k: v for k, v in written.items() if k in _TRACKED})
    return row.with_changes(**written)
