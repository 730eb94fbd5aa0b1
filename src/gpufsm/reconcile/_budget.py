"""Budgets on real spend: alert, then terminate newest first, past a cap over a window.

``hourly_budget`` caps the burn rate, which says nothing about what was already spent:
a fleet at $5/h under a $10/h cap still spends $120 a day. A spend budget counts the
dollars themselves, from the spend ledger (the transition history times the price), so
a machine that ran this morning and finished counts as much as one billing now.

Windows are calendar windows in UTC, as a provider's invoice is: ``day`` since 00:00
today, ``month`` since 00:00 on the 1st, and ``run``: a run's own total, all time, where
a run is a recovering session's generations (``run_id``), else a placement's attempts
(``placement_id``), else the machine alone.

Past ``alert_at`` of the cap: one alert (spent, burn, when the cap is reached at that
burn), each pass while anything in scope bills; once nothing does, the spend cannot
grow and there is nothing to say (a cron ``reconcile --once`` would otherwise fail for
the rest of the day, and a finished run forever). At the cap: every billing machine in
scope is terminated, newest first. Once
over the cap any billing adds to the overspend, so none is spared; newest first because
the oldest hold the most sunk work, and a pass cut short has ended the newest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol, runtime_checkable

from gpufsm.errors import ValidationError
from gpufsm.ledger import Ledger
from gpufsm.reconcile._policy import Action, Snapshot
from gpufsm.store import InstanceRecord, InstanceRows, PricePoint, TransitionRecord

__all__ = ["WINDOWS", "Spend", "SpendBudget", "SpendPolicy", "read_spend", "run_key",
           "spend_budget", "window_start"]

#: The windows a budget counts over; docs/cost.md says what each one is.
WINDOWS = ("day", "month", "run")


@runtime_checkable
class SpendPolicy(Protocol):
    """A policy that counts spend (``SpendBudget``, or one of your own): it says how far
    back the rows it counts go, so the reconciler reads histories for it, and only it."""

    def __call__(self, snap: Snapshot) -> Iterable[Action]: ...

    def spend_since(self, now: datetime) -> datetime | None:
        """The start of its window at ``now``; None: every row of the runs watched."""
        ...


def run_key(record: InstanceRecord) -> str:
    """The run a row's spend adds up in: its recovering run, else its placement, else
    the row alone (a run of one machine)."""
    return record.run_id or record.placement_id or record.id


def window_start(window: str, now: datetime) -> datetime | None:
    """Where the window that holds ``now`` begins, in UTC; None for ``run`` (all time)."""
    utc = now.astimezone(UTC)
    midnight = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return midnight
    if window == "month":
        return midnight.replace(day=1)
    return None


def _window_end(window: str, start: datetime) -> datetime | None:
    if window == "day":
        return start + timedelta(days=1)
    if window == "month":
        return (start + timedelta(days=32)).replace(day=1)
    return None


def _usd(value: float) -> str:
    """Dollars: below one, to the hundredth of a cent (a cap of $0.01 reads as one)."""
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def _newest_first(rows: Iterable[InstanceRecord]) -> list[InstanceRecord]:
    return sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)


@dataclass(frozen=True, slots=True)
class SpendBudget:
    """A policy (call it on a Snapshot) capping the dollars spent over a window.

    ``spend_since`` tells the reconciler what to read for it: finished rows back to the
    window's start, or (None, a ``run`` window) every row of the runs it watches.
    """

    cap: float
    window: str
    alert_at: float = 0.8

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValidationError("spend_budget.window", f"one of {', '.join(WINDOWS)}",
                                  value=self.window)
        if not (math.isfinite(self.cap) and self.cap > 0):
            raise ValidationError("spend_budget.cap", "dollars, more than 0", value=self.cap)
        if not (math.isfinite(self.alert_at) and 0 < self.alert_at <= 1):
            raise ValidationError("spend_budget.alert_at", "a fraction of the cap, above 0 "
                                  "and at most 1", value=self.alert_at)

    @property
    def name(self) -> str:
        """The policy's name in actions, history reasons and the pass report's notes."""
        return f"spend_budget_{self.window}"

    def __str__(self) -> str:
        return f"spend_budget {_usd(self.cap)}/{self.window} (alert at {self.alert_at:.0%})"

    def spend_since(self, now: datetime) -> datetime | None:
        return window_start(self.window, now)

    def __call__(self, snap: Snapshot) -> list[Action]:
        actions = [Action("alert", r.id, self.name, "price unknown: its spend is not counted")
                   for r in snap.billing() if r.price_per_hour is None]
        if self.window == "run":
            return actions + self._runs(snap)
        since = window_start(self.window, snap.now)
        assert since is not None  # a calendar window
        scope = f"this {self.window} (since {since:%Y-%m-%d %H:%M} UTC)"
        return actions + self._judge(snap.ledger(since), snap.billing(), None, scope,
                                     _window_end(self.window, since))

    def _runs(self, snap: Snapshot) -> list[Action]:
        """Each run with a row this daemon watches, judged on the run's every row."""
        members: dict[str, dict[str, InstanceRecord]] = {}
        for r in (*snap.instances, *snap.spent):  # spent is read later: its copy wins
            members.setdefault(run_key(r), {})[r.id] = r
        watched: dict[str, list[InstanceRecord]] = {}
        for r in snap.instances:
            watched.setdefault(run_key(r), []).append(r)
        billing: dict[str, list[InstanceRecord]] = {}
        for r in snap.billing():
            billing.setdefault(run_key(r), []).append(r)
        actions: list[Action] = []
        for key, mine in sorted(watched.items()):
            anchor = _newest_first(mine)[0].id  # the alert names the run's newest row
            ledger = snap.ledger(None, members[key].values())
            actions += self._judge(ledger, billing.get(key, []), anchor,
                                   f"by run {key} (all time)", None)
        return actions

    def _judge(self, ledger: Ledger, billing: Sequence[InstanceRecord], anchor: str | None,
               scope: str, ends: datetime | None) -> list[Action]:
        spend, burn = ledger.total, ledger.burn_rate
        if spend < self.alert_at * self.cap or (burn <= 0 and not billing):
            return []  # under the threshold, or nothing in scope bills: it cannot grow
        spent = f"spent {_usd(spend)} of {_usd(self.cap)} {scope}"
        if spend < self.cap:
            return [Action("alert", anchor, self.name,
                           f"{spent}; {self._forecast(spend, burn, ledger.now, ends)}")]
        ending = _newest_first(billing)
        said = (f"over the cap: terminating {len(ending)} billing machine(s), newest first"
                if ending else "over the cap, nothing billing left to terminate")
        actions = [Action("alert", anchor, self.name, f"{spent}, burning {_usd(burn)}/h; {said}")]
        actions += [Action("terminate", r.id, self.name, f"{spent}: over the cap")
                    for r in ending]
        return actions

    def _forecast(self, spend: float, burn: float, now: datetime, ends: datetime | None
                  ) -> str:
        """When the cap is reached at the present burn (if inside the window)."""
        if burn <= 0:
            return "burning $0/h now"
        hours = (self.cap - spend) / burn
        head = f"burning {_usd(burn)}/h"
        if ends is not None and (ends - now).total_seconds() / 3600 <= hours:
            return f"{head}: the cap is not reached before the window ends at that burn"
        at = now.astimezone(UTC) + timedelta(hours=hours)
        return f"{head}: the cap is reached in {hours:.1f}h ({at:%Y-%m-%d %H:%M} UTC) at that burn"


def spend_budget(cap: float, window: str, *, alert_at: float = 0.8) -> SpendBudget:
    """Cap the dollars spent over ``window`` (day, month or run) at ``cap``.

    Alert past ``alert_at`` of the cap; at the cap terminate every billing machine in
    scope (the fleet, or the run), newest first. Finished machines count for what they
    billed inside the window. The module docstring says why.
    """
    return SpendBudget(float(cap), window, float(alert_at))


class Spend(NamedTuple):
    """What spend is counted from: rows, their histories, their price points."""

    rows: tuple[InstanceRecord, ...]
    histories: Mapping[str, Sequence[TransitionRecord]]
    prices: Mapping[str, Sequence[PricePoint]]


def read_spend(store: InstanceRows, policies: Iterable[object],
               watched: Sequence[InstanceRecord], now: datetime
               ) -> Spend:
    """The rows, histories and price points spend policies count from: all empty when
    no policy has ``spend_since``, so a pass without one reads nothing more.

    A dated window reads every row that may have billed since the earliest window's
    start (every daemon's: spend is the account's); a ``run`` window (None) every row
    of the runs of ``watched``.
    """
    sinces = [p.spend_since(now) for p in policies if isinstance(p, SpendPolicy)]
    if not sinces:
        return Spend((), {}, {})
    rows: dict[str, InstanceRecord] = {}
    dated: list[datetime] = [s for s in sinces if isinstance(s, datetime)]
    if dated:
        rows.update((r.id, r) for r in store.rows_since(min(dated)))
    if any(s is None for s in sinces):
        runs = {r.run_id for r in watched if r.run_id}
        placements = {r.placement_id for r in watched if not r.run_id and r.placement_id}
        rows.update((r.id, r) for r in store.rows_of_runs(run_ids=runs,
                                                          placement_ids=placements))
        for r in watched:
            rows.setdefault(r.id, r)
    spent = tuple(sorted(rows.values(), key=lambda r: (r.created_at, r.id)))
    if not rows:
        return Spend(spent, {}, {})
    return Spend(spent, store.history_many(rows), store.price_points(rows))
