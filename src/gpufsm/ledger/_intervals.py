"""One instance's billing intervals: a pure function of its row and its history.

The history says exactly when each state began (the transition that entered it), so the
time a machine spent in each state needs no guess; the rules of ``_rates`` say what each
state costs. Every boundary is a time gpufsm wrote: for a change the provider made on
its own (a preemption, a console stop) that is when gpufsm saw it, at most one reconcile
interval after it happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from itertools import pairwise

from gpufsm.ledger._interval import BillingInterval, PricePoint
from gpufsm.ledger._rates import current_rate, rate_for
from gpufsm.ledger._storage import STORAGE_PRICES, StoragePrice
from gpufsm.machines import Event, InstanceState
from gpufsm.store import InstanceRecord, TransitionRecord

__all__ = ["Span", "accepted_at", "burn_rate", "clip", "cost", "intervals", "spans"]

S = InstanceState

#: (state, start, end): end None while the state lasts at ``now``.
Span = tuple[InstanceState, datetime, datetime | None]


def spans(history: Sequence[TransitionRecord], now: datetime) -> list[Span]:
    """The states of one instance in order, up to ``now``; TERMINATED left out.

    A transition into the state the row is already in (a terminate re-issued from
    TERMINATING) continues it. A time earlier than the one before it (clocks of two
    hosts) is taken as the one before, so spans never overlap.
    """
    out: list[Span] = []
    state: InstanceState | None = None
    start = datetime.min
    for row in sorted(history, key=lambda h: h.seq):
        if row.to_state is state:
            continue
        at = max(row.at, start) if state is not None else row.at
        if at > now:
            break
        if state is not None:
            out.append((state, start, at))
        state, start = row.to_state, at
    if state is not None and state is not S.TERMINATED:
        out.append((state, start, None))
    return [(s, a, b) for s, a, b in out if s is not S.TERMINATED and b != a]


def accepted_at(record: InstanceRecord, history: Iterable[TransitionRecord]
                ) -> datetime | None:
    """When the provider accepted the launch: the row's ``accepted_at``, or the first
    ``observed_created`` in the history if that is earlier (rows written before the
    column existed have only the history)."""
    seen = [h.at for h in history if h.event is Event.OBSERVED_CREATED]
    times = [t for t in (record.accepted_at, min(seen, default=None)) if t is not None]
    return min(times, default=None)


def intervals(record: InstanceRecord, history: Sequence[TransitionRecord], *,
              now: datetime, prices: Sequence[PricePoint] = (),
              storage: Mapping[str, StoragePrice] = STORAGE_PRICES
              ) -> list[BillingInterval]:
    """The intervals in which ``record`` billed up to ``now``, in order, never overlapping.

    A span of one state is cut where the launch was accepted and where a price point
    falls, so each interval has one rate. Restarts are separate intervals because they
    are separate states in the history (STOPPED → STARTING → RUNNING).
    """
    accepted = accepted_at(record, history)
    points = sorted(prices, key=lambda p: p.at)
    # the row's billable speaks for its current state only, not for a state it was in
    # at an earlier ``now``
    present = all(h.at <= now for h in history)
    out: list[BillingInterval] = []
    for state, start, end in spans(history, now):
        current = present and end is None
        # an open span is cut at ``now`` too: accepted at this very instant, it bills now
        cuts = [t for t in (accepted, *(p.at for p in points))
                if t is not None and start < t and (t < end if end else t <= now)]
        edges = [start, *sorted(set(cuts)), end]
        for piece_start, piece_end in pairwise(edges):
            assert piece_start is not None
            rate = rate_for(record, state, piece_start, accepted=accepted, last=current,
                            prices=points, storage=storage)
            if rate is not None:
                out.append(BillingInterval(record.id, state, piece_start, piece_end,
                                           rate.per_hour, rate.basis, rate.estimate))
    return out


def cost(items: Iterable[BillingInterval], *, now: datetime) -> float:
    """Dollars: the sum of rate * duration, open intervals up to ``now``."""
    return sum(i.cost(now) for i in items)


def clip(items: Iterable[BillingInterval], *, since: datetime | None, now: datetime
         ) -> list[BillingInterval]:
    """The intervals cut to the window from ``since`` (None: all of them) to ``now``."""
    out = []
    for item in items:
        part = item.clipped(since, now)
        if part is not None:
            out.append(part)
    return out


def burn_rate(records: Iterable[InstanceRecord], now: datetime, *,
              storage: Mapping[str, StoragePrice] = STORAGE_PRICES) -> float:
    """$/h of the machines billing at ``now``: the sum of each row's current rate."""
    total = 0.0
    for record in records:
        rate = current_rate(record, now, storage=storage)
        if rate is not None:
            total += rate.per_hour
    return total
