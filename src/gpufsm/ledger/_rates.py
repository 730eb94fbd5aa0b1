"""Which states bill, at what rate: the ledger's rules in one place.

The rules follow the meaning of each state (docs/cost.md says the same in prose):

* The machine's price: CREATED, STARTING, RUNNING, STOPPING (the provider has the
  machine and bills for it), TERMINATING (it has not confirmed it is gone), and
  CREATING once the launch was accepted.
* FAILED: the full price while the row is billable, because a machine may still exist
  behind it. That is an upper bound (a preempted machine may bill less), so it is
  marked as an estimate.
* STOPPED: the provider's storage price for the kept disk, where known (``_storage``).
* TERMINATED: nothing. The provider confirmed the machine is gone.

Nothing bills before the provider accepted the launch: gpufsm's intent (the row
written before the call) costs nothing. A live row the provider never confirmed is
shown at $0 as an estimate, because if the launch went through it bills unseen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from gpufsm.ledger._interval import PricePoint, RateBasis
from gpufsm.ledger._storage import STORAGE_PRICES, StoragePrice, storage_rate
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord

__all__ = ["PRICED_STATES", "Rate", "current_rate", "price_at", "rate_for"]

S = InstanceState

#: States that bill at the machine's own price (once the launch was accepted).
PRICED_STATES = frozenset({S.CREATING, S.CREATED, S.STARTING, S.RUNNING, S.STOPPING,
                           S.TERMINATING})

FAILED_WHY = "FAILED: the full price while a machine may exist (an upper bound)"
UNCONFIRMED_WHY = ("not confirmed by the provider: $0 counted, but if the launch went "
                   "through it bills unseen")


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate in $/h, what it is the price of, and why it is an estimate (None: not)."""

    per_hour: float
    basis: RateBasis
    estimate: str | None = None


def price_at(record: InstanceRecord, at: datetime, prices: Sequence[PricePoint] = ()
             ) -> tuple[float, str | None]:
    """The machine's $/h at ``at``, and why it is an estimate (None: it is not).

    With price points (sorted by time), the last one at or before ``at``; before the
    first one, the first one, marked. Without, the row's price, which is the latest the
    provider reported: applied to the whole life (docs/cost.md says why that is exact
    for a machine whose price never changed, and what a change would do).
    """
    if prices:
        current = [p for p in prices if p.at <= at]
        if not current:
            return prices[0].per_hour, "before the first recorded price: that price applied"
        return current[-1].per_hour, None
    if record.price_per_hour is None:
        return 0.0, "price unknown: the provider never reported one, counted as $0"
    return record.price_per_hour, None


def rate_for(record: InstanceRecord, state: InstanceState, at: datetime, *,
             accepted: datetime | None, last: bool,
             prices: Sequence[PricePoint] = (),
             storage: Mapping[str, StoragePrice] = STORAGE_PRICES) -> Rate | None:
    """The rate of ``record`` in ``state`` from ``at``; None where nothing bills.

    ``accepted``: when the provider accepted the launch (None: never). ``last``: this is
    the row's current state, so the row's ``billable`` speaks for it.
    """
    if state is S.TERMINATED:
        return None
    if accepted is None or at < accepted:
        if last and accepted is None and record.billable:
            return Rate(0.0, RateBasis.UNCONFIRMED, UNCONFIRMED_WHY)
        return None
    if state is S.STOPPED:
        per_hour, why = storage_rate(record.provider, record.spec, storage)
        return Rate(per_hour, RateBasis.STORAGE, why)
    if state is S.FAILED:
        if last and not record.billable:
            return None
        per_hour, _ = price_at(record, at, prices)
        return Rate(per_hour, RateBasis.PRICE, FAILED_WHY)
    per_hour, why = price_at(record, at, prices)
    return Rate(per_hour, RateBasis.PRICE, why)


def current_rate(record: InstanceRecord, now: datetime, *,
                 accepted: datetime | None = None,
                 storage: Mapping[str, StoragePrice] = STORAGE_PRICES) -> Rate | None:
    """What ``record`` bills per hour at ``now`` (None: nothing), from the row alone.

    ``accepted`` overrides the row's ``accepted_at`` (the ledger passes what the history
    says for rows written before that column existed).
    """
    return rate_for(record, record.state, now, accepted=accepted or record.accepted_at,
                    last=True, storage=storage)
