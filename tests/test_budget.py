"""Budgets on real spend (``spend_budget``): hand-built snapshots, spend worked out here
independently of the ledger, and the policy's actions checked against it; then the
reconciler reading what the policy counts, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpufsm import Fleet, InstanceState
from gpufsm.errors import ValidationError
from gpufsm.machines import EdgeKind, Event
from gpufsm.reconcile import Action, Reconciler, Snapshot, SpendBudget, spend_budget
from gpufsm.reconcile._budget import run_key, window_start
from gpufsm.store import InstanceRecord, SqlInstanceStore, TransitionRecord
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
DAY = datetime(2026, 3, 15, tzinfo=UTC)  # the day window's start at NOW
HOUR = 3600.0


@dataclass(frozen=True)
class Machine:
    """A machine's life in seconds relative to NOW: launched, accepted (CREATED, the
    provider bills from here), RUNNING, then maybe TERMINATING and TERMINATED."""

    n: int
    launched: int
    price: float | None = 1.0
    ends: tuple[int, int] | None = None  # (terminate sent, confirmed gone); None: alive
    run: str | None = None

    @property
    def id(self) -> str:
        return f"m{self.n:03d}"

    def at(self, second: int) -> datetime:
        return NOW + timedelta(seconds=second)

    def steps(self) -> list[tuple[S, Event, EdgeKind, int]]:
        out = [(S.CREATING, Event.LAUNCH, EdgeKind.COMMAND, self.launched),
               (S.CREATED, Event.OBSERVED_CREATED, EdgeKind.OBSERVATION, self.launched + 60),
               (S.RUNNING, Event.OBSERVED_RUNNING, EdgeKind.OBSERVATION, self.launched + 120)]
        if self.ends is not None:
            sent, gone = self.ends
            out += [(S.TERMINATING, Event.TERMINATE, EdgeKind.COMMAND, sent),
                    (S.TERMINATED, Event.OBSERVED_GONE, EdgeKind.OBSERVATION, gone)]
        return [step for step in out if step[3] <= 0]  # nothing after NOW

    def history(self) -> list[TransitionRecord]:
        rows, before = [], None
        for n, (state, event, kind, second) in enumerate(self.steps(), start=1):
            rows.append(TransitionRecord(n, self.id, before, state, event, kind, "t", n,
                                         self.at(second)))
            before = state
        return rows

    def record(self) -> InstanceRecord:
        state, event, _, second = self.steps()[-1]
        return InstanceRecord(
            id=self.id, provider="sim", state=state, version=len(self.steps()),
            client_token=self.id, tag=f"gpufsm-{self.id}", name=None,
            billable=state is not S.TERMINATED, spec={}, created_at=self.at(self.launched),
            updated_at=self.at(second), state_entered_at=self.at(second),
            price_per_hour=self.price, accepted_at=self.at(self.launched + 60),
            entered_by=event, run_id=self.run)

    def spend(self, since: datetime | None) -> float:
        """Dollars billed from ``since`` to NOW: price x the accepted-to-gone overlap."""
        start = self.at(self.launched + 60)
        end = self.at(self.ends[1]) if self.ends is not None and self.ends[1] <= 0 else NOW
        if since is not None:
            start = max(start, since)
        return (self.price or 0.0) * max(0.0, (end - start).total_seconds()) / HOUR

    def billing(self) -> bool:
        """In a state Snapshot.billing() counts: alive, accepted and not ending."""
        return self.record().state in (S.CREATED, S.RUNNING)

    def spending(self) -> bool:
        """Its spend may still grow: billing, or ending at a known price."""
        return self.billing() or bool(self.record().state is S.TERMINATING and self.price)


def snapshot(machines: Sequence[Machine], mine: Sequence[Machine] | None = None) -> Snapshot:
    """The reconciler's snapshot: ``mine`` (default: every live one) may be acted on,
    every machine counts."""
    live = [m.record() for m in (machines if mine is None else mine)
            if m.record().state is not S.TERMINATED]
    return Snapshot(now=NOW, instances=tuple(live),
                    spent=tuple(m.record() for m in machines),
                    histories={m.id: m.history() for m in machines})


@st.composite
def machines(draw: st.DrawFn, runs: Sequence[str | None] = (None,)) -> list[Machine]:
    out = []
    for n in range(draw(st.integers(1, 8))):
        launched = draw(st.integers(-3 * 86400, -180))  # up to three days back
        ended = draw(st.booleans())
        ends = None
        if ended:
            sent = draw(st.integers(launched + 120, 0))
            ends = (sent, draw(st.integers(sent, sent + 600)))
        out.append(Machine(n, launched, draw(st.sampled_from([0.5, 1.0, 2.75, None])), ends,
                           draw(st.sampled_from(list(runs)))))
    return out


def terminated(actions: Sequence[Action]) -> list[str | None]:
    return [a.instance_id for a in actions if a.kind == "terminate"]


def alerts(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if a.kind == "alert" and "price unknown" not in a.reason]


def newest_first(ms: Sequence[Machine]) -> list[str]:
    return [m.id for m in sorted(ms, key=lambda m: (m.launched, m.id), reverse=True)]


# -- the day window ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(machines(), st.floats(0.05, 40.0), st.sampled_from([0.5, 0.8, 1.0]))
def test_over_the_cap_every_billing_machine_ends_newest_first(
        fleet: list[Machine], cap: float, alert_at: float) -> None:
    spend = sum(m.spend(DAY) for m in fleet)
    assume(abs(spend - cap) > 1e-6 and abs(spend - alert_at * cap) > 1e-6)
    actions = spend_budget(cap, "day", alert_at=alert_at)(snapshot(fleet))
    if spend < cap:
        assert terminated(actions) == []
    else:
        assert terminated(actions) == newest_first([m for m in fleet if m.billing()])
    growing = any(m.spending() for m in fleet)
    assert len(alerts(actions)) == (1 if spend >= alert_at * cap and growing else 0)
    unpriced = {m.id for m in fleet if m.billing() and m.price is None}
    assert {a.instance_id for a in actions if "price unknown" in a.reason} == unpriced


@settings(max_examples=100, deadline=None)
@given(machines(), st.floats(0.05, 40.0), st.data())
def test_spend_counts_every_row_but_acts_only_on_the_daemons_own(
        fleet: list[Machine], cap: float, data: st.DataObject) -> None:
    mine = data.draw(st.lists(st.sampled_from(fleet), unique=True))
    spend = sum(m.spend(DAY) for m in fleet)
    assume(abs(spend - cap) > 1e-6)
    actions = spend_budget(cap, "day")(snapshot(fleet, mine))
    assert set(terminated(actions)) <= {m.id for m in mine}
    if spend >= cap:
        assert terminated(actions) == newest_first([m for m in mine if m.billing()])
    else:
        assert terminated(actions) == []


def test_a_machine_finished_inside_the_window_counts_one_finished_before_does_not() -> None:
    # ran yesterday 08:00 to 20:00 at $2/h: $24, none of it today
    yesterday = Machine(1, -28 * 3600 - 60, 2.0, ends=(-16 * 3600, -16 * 3600))
    # ran today 06:00 to 08:00 at $2/h: $4, all of it today
    today = Machine(2, -6 * 3600 - 60, 2.0, ends=(-4 * 3600, -4 * 3600))
    live = Machine(3, -3 * 3600 - 60, 0.5)  # $1.50 so far
    budget = spend_budget(5.0, "day")
    assert terminated(budget(snapshot([yesterday, live]))) == []
    assert terminated(budget(snapshot([yesterday, today, live]))) == [live.id]
    (alert,) = alerts(budget(snapshot([yesterday, today, live])))
    assert alert.instance_id is None  # the fleet's, not one machine's
    assert "spent $5.50 of $5.00 this day (since 2026-03-15 00:00 UTC)" in alert.reason
    assert "terminating 1 billing machine(s), newest first" in alert.reason


def test_the_alert_says_the_spend_the_burn_and_when_the_cap_is_reached() -> None:
    live = Machine(1, -4 * 3600 - 60, 2.0)  # $8 so far today, $2/h
    (alert,) = spend_budget(10.0, "day")(snapshot([live]))
    assert alert.kind == "alert" and alert.policy == "spend_budget_day"
    assert alert.reason == ("spent $8.00 of $10.00 this day (since 2026-03-15 00:00 UTC); "
                            "burning $2.00/h: the cap is reached in 1.0h (2026-03-15 "
                            "13:00 UTC) at that burn")
    assert spend_budget(10.0, "day", alert_at=0.9)(snapshot([live])) == []
    (late,) = spend_budget(40.0, "day", alert_at=0.2)(snapshot([live]))
    assert "not reached before the window ends" in late.reason  # 16h at $2/h is tomorrow


def test_the_month_window_starts_on_the_first() -> None:
    gone = -(13 * 86400 + 12 * 3600)  # Mar 2 00:00; launched Feb 23 12:00
    ran = Machine(1, -20 * 86400, 1.0, ends=(gone, gone))  # $24 of it in March
    assert spend_budget(24.0, "month")(snapshot([ran])) == []  # nothing bills: it cannot grow
    ending = Machine(2, -3600 - 60, 1.0, ends=(-60, 60))  # terminate sent, not yet gone
    (alert,) = spend_budget(24.0, "month")(snapshot([ran, ending]))
    assert "spent $25.00 of $24.00 this month (since 2026-03-01 00:00 UTC)" in alert.reason
    assert "over the cap, nothing billing left to terminate" in alert.reason
    assert window_start("month", NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    assert window_start("day", NOW) == DAY and window_start("run", NOW) is None


# -- the run window ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(machines(runs=("run-a", "run-b", None)), st.floats(0.05, 40.0))
def test_a_run_budget_ends_only_the_runs_over_their_own_total(
        fleet: list[Machine], cap: float) -> None:
    records = {m.id: m.record() for m in fleet}
    totals: dict[str, float] = {}
    for m in fleet:
        key = run_key(records[m.id])
        totals[key] = totals.get(key, 0.0) + m.spend(None)
    assume(all(abs(t - cap) > 1e-6 for t in totals.values()))
    actions = spend_budget(cap, "run")(snapshot(fleet))
    over = {k for k, t in totals.items() if t >= cap}
    ended = terminated(actions)
    for key in over:
        in_run = [m for m in fleet if run_key(records[m.id]) == key and m.billing()]
        assert [i for i in ended if i in {m.id for m in in_run}] == newest_first(in_run)
    assert {run_key(records[i]) for i in ended if i} <= over
    growing = {run_key(records[m.id]) for m in fleet if m.spending()}
    assert {a.instance_id and run_key(records[a.instance_id]) for a in alerts(actions)} == {
        k for k in growing if totals[k] >= 0.8 * cap}
    assert len(alerts(actions)) == len({a.instance_id for a in alerts(actions)})


def test_a_run_counts_its_finished_generations_whenever_they_ran() -> None:
    first = Machine(1, -5 * 86400 - 60, 1.0, ends=(-4 * 86400, -4 * 86400), run="r")  # $24
    second = Machine(2, -3600 - 60, 1.0, run="r")  # $1 so far
    alone = Machine(3, -3600 - 60, 1.0)  # $1: its own run
    actions = spend_budget(20.0, "run")(snapshot([first, second, alone]))
    assert terminated(actions) == [second.id]
    (alert,) = alerts(actions)
    assert alert.instance_id == second.id
    assert alert.reason.startswith("spent $25.00 of $20.00 by run r (all time)")


# -- the policy's own checks ---------------------------------------------------------


@pytest.mark.parametrize(("cap", "window", "alert_at", "field"), [
    (10, "week", 0.8, "window"), (0, "day", 0.8, "cap"), (float("inf"), "day", 0.8, "cap"),
    (10, "day", 0.0, "alert_at"), (10, "day", 1.5, "alert_at")])
def test_bad_budgets_are_refused(cap: float, window: str, alert_at: float, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        spend_budget(cap, window, alert_at=alert_at)


def test_the_budget_says_what_the_reconciler_must_read() -> None:
    budget = spend_budget(100, "day")
    assert isinstance(budget, SpendBudget)
    assert budget.spend_since(NOW) == DAY
    assert spend_budget(25, "run").spend_since(NOW) is None
    assert str(budget) == "spend_budget $100.00/day (alert at 80%)"


# -- through the reconciler, on both databases ---------------------------------------


def test_the_reconciler_counts_a_finished_machine_and_ends_the_newest(
        store: SqlInstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(DAY)
    fleet = Fleet(store, [SimulatedCloud("sim", clock=clock, seed=1)], clock=clock)
    spec = {"provider": "sim", "instance_type": "gpu_1x_a10"}  # $0.75/h
    early = fleet.launch(spec)
    fleet.wait_for(early.id, S.RUNNING, timeout=900)
    clock.advance(2 * HOUR)
    fleet.terminate(early.id)
    fleet.wait_for(early.id, S.TERMINATED, timeout=900)  # about $1.50, finished
    old, new = fleet.launch(spec), None
    clock.advance(60)
    new = fleet.launch(spec)
    for i in (old.id, new.id):
        fleet.wait_for(i, S.RUNNING, timeout=900)
    clock.advance(HOUR)  # two more machines, about $1.50 more

    reads: list[str] = []

    def spy(name: str) -> Callable[..., object]:
        real = getattr(store, name)

        def read(*args: object, **kwargs: object) -> object:
            reads.append(name)
            return real(*args, **kwargs)
        return read

    for name in ("rows_since", "rows_of_runs"):
        monkeypatch.setattr(store, name, spy(name))
    report = Reconciler(fleet).run_once()  # no spend policy: nothing more is read
    assert reads == []

    report = Reconciler(fleet, policies=[spend_budget(10.0, "day")]).run_once()
    assert reads == ["rows_since"]
    assert report.problems_of("alert") == []  # about $3 of $10

    report = Reconciler(fleet, policies=[spend_budget(2.5, "day")]).run_once()
    (alert,) = report.problems_of("alert")
    assert alert.provider == "*" and "over the cap" in alert.message
    assert fleet.get(new.id).state is S.TERMINATING
    assert fleet.get(old.id).state is S.TERMINATING
    ended = [c.instance_id for c in report.changes if c.event == "terminate"]
    assert ended == [new.id, old.id]  # newest first
    assert "policy spend_budget_day: acted on 2/2" in report.notes
    assert (fleet.history(new.id)[-1].reason or "").startswith("policy spend_budget_day: spent")


def test_a_price_rise_counts_from_when_it_was_seen_not_over_the_whole_life(
        store: SqlInstanceStore) -> None:
    """A spot price quadrupling late in a machine's life: spend is about $1.50 + $0.50,
    under a $4 cap; priced at the last price over its whole life it would be ~$6.50."""
    clock = FakeClock(DAY)
    cloud = SimulatedCloud("sim", clock=clock, seed=1)
    fleet = Fleet(store, [cloud], clock=clock)
    rec = fleet.launch({"provider": "sim", "instance_type": "gpu_1x_a10"})  # $0.75/h
    fleet.wait_for(rec.id, S.RUNNING, timeout=900)
    clock.advance(2 * HOUR)
    pid = fleet.get(rec.id).provider_instance_id
    assert pid is not None
    cloud.reprice(pid, 3.0)
    Reconciler(fleet).run_once()  # sees the new price
    assert fleet.get(rec.id).price_per_hour == 3.0
    clock.advance(HOUR / 6)
    report = Reconciler(fleet, policies=[spend_budget(4.0, "day", alert_at=0.99)]).run_once()
    assert report.problems_of("alert") == []
    assert fleet.get(rec.id).state is S.RUNNING
