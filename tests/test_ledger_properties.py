"""Property tests of the spend ledger over random legal lives.

A life is a random walk over the transition table (``edges_from(TRANSITIONS)``: only
legal steps), with random whole-second times, a random price (or none), a random
provider (one whose storage price is known, one whose is not), a random disk and random
price points. The reference below computes the cost another way: a sweep, second by
second, asking "what state is it in now, and what does that state cost?". It shares no
code with the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpufsm.ledger import PricePoint, burn_rate, clip, cost, intervals
from gpufsm.machines import TRANSITIONS, EdgeKind, Event, InstanceState, edges_from
from gpufsm.store import InstanceRecord, TransitionRecord

S = InstanceState
E = Event
T0 = datetime(2026, 6, 1, tzinfo=UTC)
INDEX = edges_from(TRANSITIONS)
#: RunPod's stopped-volume price, restated here so the reference owes nothing to the
#: ledger's table: $0.20 per GB and 730-hour month.
RUNPOD_GB_HOUR = 0.20 / 730


@dataclass(frozen=True)
class Life:
    steps: list[tuple[S, Event, int]]  # (state entered, by event, at second)
    price: float | None
    provider: str
    volume: int | None
    refused: bool  # the launch was refused: the row is not billable
    late_accept: int | None  # acceptance found later (by tag), without observed_created
    points: list[tuple[int, float]]  # price points (second, $/h)
    now: int

    def when(self, second: int) -> datetime:
        return T0 + timedelta(seconds=second)

    def history(self) -> list[TransitionRecord]:
        rows = []
        before: S | None = None
        for n, (state, event, second) in enumerate(self.steps, 1):
            kind = EdgeKind.COMMAND if event is E.LAUNCH else INDEX[before][event].kind  # type: ignore[index]
            rows.append(TransitionRecord(n, "i", before, state, event, kind, "test", n,
                                         self.when(second)))
            before = state
        return rows

    def accepted(self) -> int | None:
        seen = [s for _, e, s in self.steps if e is E.OBSERVED_CREATED]
        times = [*seen, *([self.late_accept] if self.late_accept is not None else [])]
        return min(times, default=None)

    def record(self) -> InstanceRecord:
        final, _, second = self.steps[-1]
        spec: dict[str, Any] = {"provider": self.provider}
        if self.volume is not None:
            spec["options"] = {"volumeInGb": self.volume}
        accepted = self.accepted()
        return InstanceRecord(
            id="i", provider=self.provider, state=final, version=len(self.steps),
            client_token="t", tag="gpufsm-t", name=None,
            billable=final is not S.TERMINATED and not self.refused, spec=spec,
            created_at=T0, updated_at=self.when(second), state_entered_at=self.when(second),
            instance_type="t", price_per_hour=self.price,
            accepted_at=None if accepted is None else self.when(accepted))

    def prices(self) -> list[PricePoint]:
        return [PricePoint(self.when(s), p) for s, p in self.points]


@st.composite
def lives(draw: st.DrawFn) -> Life:
    state, second = S.CREATING, 0
    steps: list[tuple[S, Event, int]] = [(S.CREATING, E.LAUNCH, 0)]
    refused = False
    for _ in range(draw(st.integers(0, 14))):
        if state is S.TERMINATED:
            break
        event = draw(st.sampled_from(sorted(INDEX[state])))
        second += draw(st.integers(0, 4000))
        if state is S.CREATING and event is E.LAUNCH_FAILED:
            refused = draw(st.booleans())
        state = INDEX[state][event].dest
        steps.append((state, event, second))
    late = None
    if not any(e is E.OBSERVED_CREATED for _, e, _ in steps) and draw(st.booleans()):
        late = draw(st.integers(0, second + 2000))
    points = sorted(draw(st.lists(st.tuples(st.integers(0, second + 2000),
                                            st.integers(1, 900).map(lambda c: c / 100)),
                                  max_size=3, unique_by=lambda p: p[0])))
    return Life(
        steps=steps,
        price=draw(st.none() | st.integers(1, 2000).map(lambda c: c / 100)),
        provider=draw(st.sampled_from(["runpod", "vastai"])),
        volume=draw(st.none() | st.integers(1, 500)),
        refused=refused, late_accept=late, points=points,
        now=draw(st.integers(0, second + 4000)))


def state_at(life: Life, second: int) -> tuple[S, bool]:
    """The state during [second, second + 1), and whether it is the row's state now
    (the last step, with the whole history at or before ``now``)."""
    index = max(n for n, (_, _, s) in enumerate(life.steps) if s <= second)
    present = life.steps[-1][2] <= life.now
    return life.steps[index][0], present and index == len(life.steps) - 1


def machine_rate(life: Life, second: int, *, with_points: bool) -> float:
    if with_points and life.points:
        earlier = [p for s, p in life.points if s <= second]
        return earlier[-1] if earlier else life.points[0][1]
    return life.price or 0.0


def reference_rate(life: Life, second: int, *, with_points: bool) -> float:
    """$/h during [second, second + 1), by the rules of docs/cost.md, written afresh."""
    state, current = state_at(life, second)
    accepted = life.accepted()
    if state is S.TERMINATED or accepted is None or second < accepted:
        return 0.0
    if state is S.STOPPED:
        return (life.volume or 20) * RUNPOD_GB_HOUR if life.provider == "runpod" else 0.0
    if state is S.FAILED and current and life.refused:
        return 0.0
    return machine_rate(life, second, with_points=with_points)


def reference_cost(life: Life, *, since: int = 0, with_points: bool = False) -> float:
    return sum(reference_rate(life, s, with_points=with_points)
               for s in range(since, life.now)) / 3600


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=300, deadline=None)
@given(lives())
def test_the_total_is_the_second_by_second_sweep(life: Life) -> None:
    now = life.when(life.now)
    found = intervals(life.record(), life.history(), now=now)
    assert close(cost(found, now=now), reference_cost(life))


@settings(max_examples=300, deadline=None)
@given(lives())
def test_with_price_points_the_total_is_the_sweep_at_those_prices(life: Life) -> None:
    now = life.when(life.now)
    found = intervals(life.record(), life.history(), now=now, prices=life.prices())
    assert close(cost(found, now=now), reference_cost(life, with_points=True))


@settings(max_examples=300, deadline=None)
@given(lives())
def test_intervals_are_ordered_disjoint_and_none_after_terminated(life: Life) -> None:
    now = life.when(life.now)
    found = intervals(life.record(), life.history(), now=now, prices=life.prices())
    for a, b in pairwise(found):
        assert a.end is not None, "only the last interval may be open"
        assert a.start < a.end <= b.start
    assert all(i.end is None or i.start < i.end for i in found)
    assert all(i.until(now) <= now for i in found)
    gone = [life.when(s) for state, _, s in life.steps if state is S.TERMINATED]
    if gone and gone[0] <= now:
        assert all(i.until(now) <= gone[0] for i in found)
        assert not any(i.is_open for i in found)


@settings(max_examples=300, deadline=None)
@given(lives(), st.integers(0, 60000))
def test_clipping_to_a_window_never_adds_and_is_the_sweep_of_the_window(
        life: Life, since: int) -> None:
    now = life.when(life.now)
    found = intervals(life.record(), life.history(), now=now)
    inside = clip(found, since=life.when(since), now=now)
    assert cost(inside, now=now) <= cost(found, now=now) + 1e-12
    assert close(cost(inside, now=now), reference_cost(life, since=since))
    assert all(i.start >= life.when(since) for i in inside)


@settings(max_examples=200, deadline=None)
@given(lives(), st.integers(0, 10000))
def test_cost_never_falls_as_now_moves_on(life: Life, later: int) -> None:
    history, record = life.history(), life.record()
    early, late = life.when(life.now), life.when(life.now + later)
    before = cost(intervals(record, history, now=early), now=early)
    after = cost(intervals(record, history, now=late), now=late)
    assert after >= before - 1e-12


@settings(max_examples=200, deadline=None)
@given(lives())
def test_the_burn_rate_is_the_rate_of_the_open_interval(life: Life) -> None:
    if life.steps[-1][2] > life.now:
        return  # the row's present is after this ``now``: burn speaks of the present
    now = life.when(life.now)
    record = life.record()
    found: Sequence[Any] = intervals(record, life.history(), now=now)
    open_rate = sum(i.rate for i in found if i.is_open)
    assert close(burn_rate([record], now), open_rate)
    assert close(open_rate, reference_rate(life, life.now, with_points=False))
