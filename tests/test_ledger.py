"""The spend ledger on hand-written lives: restarts, stopped disks, price changes, the
launch before acceptance, FAILED and billable, TERMINATED, windows and groups.

Every expected figure is worked out by hand in the test (hours times $/h), never read back
from the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gpufsm.ledger import (
    HOURS_PER_MONTH,
    STORAGE_PRICES,
    BillingInterval,
    GroupBy,
    Ledger,
    PricePoint,
    RateBasis,
    burn_rate,
    clip,
    cost,
    intervals,
    spans,
    storage_rate,
)
from gpufsm.machines import EdgeKind, Event, InstanceState, edges_from
from gpufsm.store import InstanceRecord, TransitionRecord

S = InstanceState
E = Event
T0 = datetime(2026, 12, 1, tzinfo=UTC)
INDEX = edges_from()


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def life(*steps: tuple[Event, float], instance_id: str = "i-1") -> list[TransitionRecord]:
    """A history from (event, hour) steps after the launch at hour 0; each step must be an
    edge of the table from the state the previous one left."""
    rows = [TransitionRecord(1, instance_id, None, S.CREATING, E.LAUNCH, EdgeKind.COMMAND,
                             "test", 1, T0)]
    state = S.CREATING
    for n, (event, hour) in enumerate(steps, 2):
        edge = INDEX[state][event]  # KeyError: not a legal step
        rows.append(TransitionRecord(n, instance_id, state, edge.dest, event, edge.kind,
                                     "test", n, at(hour)))
        state = edge.dest
    return rows


def row(history: Sequence[TransitionRecord], *, price: float | None = 1.0,
        provider: str = "lambda", billable: bool | None = None,
        accepted: datetime | str | None = "history", spec: dict[str, Any] | None = None,
        name: str | None = "job", instance_type: str | None = "gpu_1x_a10"
        ) -> InstanceRecord:
    """The row at the end of ``history``; accepted_at from its observed_created unless
    given; billable as the engine leaves it unless given."""
    last = history[-1]
    if accepted == "history":
        accepted = next((h.at for h in history if h.event is E.OBSERVED_CREATED), None)
    assert not isinstance(accepted, str)
    return InstanceRecord(
        id=last.instance_id, provider=provider, state=last.to_state, version=last.version,
        client_token="t", tag="gpufsm-t", name=name,
        billable=(last.to_state is not S.TERMINATED) if billable is None else billable,
        spec=spec if spec is not None else {"provider": provider},
        created_at=T0, updated_at=last.at, state_entered_at=last.at,
        instance_type=instance_type, price_per_hour=price, accepted_at=accepted)


def shape(items: Sequence[BillingInterval]) -> list[tuple[str, float, float | None, float]]:
    """(state, start hour, end hour or None, rate) of each interval."""
    def hour(t: datetime | None) -> float | None:
        return None if t is None else (t - T0).total_seconds() / 3600
    return [(i.state.value, hour(i.start), hour(i.end), i.rate) for i in items]


def test_a_restart_is_separate_intervals_and_stopped_time_bills_storage_only() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_STARTING, 0.5),
                   (E.OBSERVED_RUNNING, 1), (E.STOP, 3), (E.OBSERVED_STOPPED, 3.5),
                   (E.START, 5.5), (E.OBSERVED_RUNNING, 6), (E.TERMINATE, 8),
                   (E.OBSERVED_GONE, 8.25))
    record = row(history, price=2.0, provider="runpod",
                 spec={"provider": "runpod", "options": {"volumeInGb": 73}})
    found = intervals(record, history, now=at(100))
    disk = 73 * 0.20 / HOURS_PER_MONTH
    assert shape(found) == [
        ("CREATED", 0, 0.5, 2.0), ("STARTING", 0.5, 1, 2.0), ("RUNNING", 1, 3, 2.0),
        ("STOPPING", 3, 3.5, 2.0), ("STOPPED", 3.5, 5.5, disk), ("STARTING", 5.5, 6, 2.0),
        ("RUNNING", 6, 8, 2.0), ("TERMINATING", 8, 8.25, 2.0)]
    # billed at the price for 0.5 + 0.5 + 2 + 0.5 + 0.5 + 2 + 0.25 = 6.25 h, storage 2 h
    assert cost(found, now=at(100)) == pytest.approx(6.25 * 2.0 + 2 * disk)
    assert all(i.known for i in found)
    assert burn_rate([record], at(100)) == 0.0  # confirmed gone: nothing bills now


def test_stopped_with_the_providers_default_disk_and_an_adopted_disk() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_STOPPED, 1))
    plain = row(history, provider="runpod", spec={"provider": "runpod"})
    (_, stopped) = intervals(plain, history, now=at(3))
    assert stopped.basis is RateBasis.STORAGE
    assert stopped.rate == pytest.approx(20 * 0.20 / 730)  # volumeInGb defaults to 20
    assert stopped.known
    adopted = row(history, provider="runpod", spec={"provider": "runpod", "adopted": True})
    (_, guessed) = intervals(adopted, history, now=at(3))
    assert guessed.rate == pytest.approx(20 * 0.20 / 730)
    assert guessed.estimate is not None and "adopted" in guessed.estimate


def test_stopped_where_the_storage_price_is_unknown_is_zero_and_says_so() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), (E.OBSERVED_STOPPED, 2))
    record = row(history, provider="vastai", price=0.4)
    running, stopped = intervals(record, history, now=at(10))
    assert (running.rate, stopped.rate) == (0.4, 0.0)
    assert stopped.estimate == "storage price unknown for vastai: stopped time counted as $0"
    assert cost([running, stopped], now=at(10)) == pytest.approx(2 * 0.4)
    assert stopped.is_open and burn_rate([record], at(10)) == 0.0


def test_a_price_change_splits_the_interval_and_before_the_first_price_is_an_estimate() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 1))
    record = row(history, price=3.0)  # the row keeps only the latest price
    points = [PricePoint(at(2), 1.0), PricePoint(at(4), 3.0)]
    found = intervals(record, history, now=at(5), prices=points)
    assert shape(found) == [("CREATED", 0, 1, 1.0), ("RUNNING", 1, 2, 1.0),
                            ("RUNNING", 2, 4, 1.0), ("RUNNING", 4, None, 3.0)]
    assert [i.known for i in found] == [False, False, True, True]
    # 2 h at the first price (estimated), 2 h at 1.0, 1 h at 3.0
    assert cost(found, now=at(5)) == pytest.approx(2 * 1.0 + 2 * 1.0 + 1 * 3.0)


def test_without_price_points_the_latest_price_is_applied_to_the_whole_life() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 1))
    found = intervals(row(history, price=3.0), history, now=at(5))
    assert [i.rate for i in found] == [3.0, 3.0]
    assert all(i.known for i in found)


def test_no_price_reported_counts_zero_as_an_estimate() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 1))
    found = intervals(row(history, price=None), history, now=at(5))
    assert [i.rate for i in found] == [0.0, 0.0]
    assert all(i.estimate and "price unknown" in i.estimate for i in found)


def test_the_launch_bills_from_acceptance_not_from_our_intent() -> None:
    # the provider's answer came 30 minutes after the row was written (a slow launch)
    history = life((E.OBSERVED_CREATED, 0.5), (E.OBSERVED_RUNNING, 1))
    found = intervals(row(history), history, now=at(2))
    assert shape(found) == [("CREATED", 0.5, 1, 1.0), ("RUNNING", 1, None, 1.0)]


def test_acceptance_found_after_a_terminate_bills_from_then() -> None:
    # terminated while CREATING, then the machine was found by tag 15 minutes later
    history = life((E.TERMINATE, 1), (E.OBSERVED_GONE, 2))
    record = row(history, accepted=at(1.25))
    assert shape(intervals(record, history, now=at(3))) == [("TERMINATING", 1.25, 2, 1.0)]


def test_acceptance_falls_back_to_the_history_for_rows_without_the_column() -> None:
    history = life((E.OBSERVED_CREATED, 0.25), (E.OBSERVED_RUNNING, 1))
    record = row(history, accepted=None)
    assert shape(intervals(record, history, now=at(2))) == [
        ("CREATED", 0.25, 1, 1.0), ("RUNNING", 1, None, 1.0)]


def test_a_live_unconfirmed_launch_is_a_zero_dollar_estimate() -> None:
    history = life()
    (only,) = intervals(row(history, accepted=None), history, now=at(1))
    assert (only.state, only.rate, only.basis, only.end) == (
        S.CREATING, 0.0, RateBasis.UNCONFIRMED, None)
    assert only.estimate is not None and "unseen" in only.estimate


def test_a_refused_launch_costs_nothing() -> None:
    history = life((E.LAUNCH_FAILED, 0))
    assert intervals(row(history, billable=False, accepted=None), history, now=at(5)) == []
    assert burn_rate([row(history, billable=False, accepted=None)], at(5)) == 0.0


def test_failed_bills_the_full_price_while_billable_marked_as_an_upper_bound() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), (E.OBSERVED_FAILED, 1))
    record = row(history, price=2.0)
    running, failed = intervals(record, history, now=at(4))
    assert (failed.state, failed.rate, failed.is_open) == (S.FAILED, 2.0, True)
    assert failed.estimate is not None and not running.estimate
    assert cost([running, failed], now=at(4)) == pytest.approx(4 * 2.0)
    assert burn_rate([record], at(4)) == 2.0
    # the same row once not billable: its FAILED time no longer bills
    assert shape(intervals(row(history, price=2.0, billable=False), history, now=at(4))) == [
        ("RUNNING", 0, 1, 2.0)]


def test_terminating_bills_and_nothing_bills_after_terminated() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), (E.TERMINATE, 1),
                   (E.TERMINATE, 1.5), (E.OBSERVED_GONE, 2))
    found = intervals(row(history), history, now=at(50))
    # the re-issued terminate continues TERMINATING: one interval, not two
    assert shape(found) == [("RUNNING", 0, 1, 1.0), ("TERMINATING", 1, 2, 1.0)]
    assert cost(found, now=at(50)) == pytest.approx(2.0)


def test_now_before_the_end_of_the_history_sees_the_life_so_far() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), (E.TERMINATE, 5),
                   (E.OBSERVED_GONE, 6))
    found = intervals(row(history), history, now=at(3))
    assert shape(found) == [("RUNNING", 0, None, 1.0)]
    assert cost(found, now=at(3)) == pytest.approx(3.0)
    assert [s for s, _, _ in spans(history, at(3))] == [S.RUNNING]


def test_since_clips_intervals_to_the_window() -> None:
    history = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 1), (E.OBSERVED_STOPPED, 4))
    found = intervals(row(history, price=2.0), history, now=at(6))
    inside = clip(found, since=at(2), now=at(6))
    assert shape(inside) == [("RUNNING", 2, 4, 2.0), ("STOPPED", 4, None, 0.0)]
    assert cost(inside, now=at(6)) == pytest.approx(2 * 2.0)
    assert clip(found, since=at(7), now=at(6)) == []


def test_the_ledger_groups_totals_and_burn() -> None:
    a = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), instance_id="a")
    b = life((E.OBSERVED_CREATED, 0), (E.OBSERVED_RUNNING, 0), (E.TERMINATE, 2),
             (E.OBSERVED_GONE, 2), instance_id="b")
    c = life((E.OBSERVED_CREATED, 1), (E.OBSERVED_RUNNING, 1), instance_id="c")
    refused = life((E.LAUNCH_FAILED, 0), instance_id="d")
    records = [row(a, price=1.0, provider="lambda", name="train"),
               row(b, price=0.5, provider="vastai", name="train", instance_type="4090"),
               row(c, price=2.0, provider="lambda", name=None),
               row(refused, billable=False, accepted=None)]
    ledger = Ledger.of(records, {"a": a, "b": b, "c": c, "d": refused}, now=at(4))
    assert [r.record.id for r in ledger.rows] == ["a", "b", "c"]  # d never billed
    assert ledger.total == pytest.approx(4 * 1.0 + 2 * 0.5 + 3 * 2.0)
    assert ledger.burn_rate == pytest.approx(1.0 + 2.0)
    by_provider = {g.key: (g.cost, g.burn) for g in ledger.groups(GroupBy.PROVIDER)}
    assert by_provider == {"lambda": pytest.approx((10.0, 3.0)), "vastai": (1.0, 0.0)}
    assert [g.key for g in ledger.groups(GroupBy.NAME)] == ["(no name)", "train"]
    assert {g.key for g in ledger.groups(GroupBy.TYPE)} == {"gpu_1x_a10", "4090"}
    window = Ledger.of(records, {"a": a, "b": b, "c": c, "d": refused}, now=at(4),
                       since=at(3))
    assert [r.record.id for r in window.rows] == ["a", "c"]  # b ended before the window
    assert window.total == pytest.approx(1 * 1.0 + 1 * 2.0)


def test_the_storage_table_ignores_sizes_that_are_not_sizes() -> None:
    assert "runpod" in STORAGE_PRICES
    default = 20 * 0.20 / HOURS_PER_MONTH
    for options in ({"volumeInGb": True}, {"volumeInGb": "50"}, {"volumeInGb": -1}, {}):
        rate, why = storage_rate("runpod", {"options": options})
        assert (rate, why) == (pytest.approx(default), None)
    assert storage_rate("runpod", {"options": {"volumeInGb": 0}}) == (0.0, None)
