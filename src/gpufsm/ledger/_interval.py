"""The ledger's values: a stretch of time at one rate, and a price seen at a time.

Frozen and plain, like the store's records, so a ledger can be computed, cached and
compared without anyone changing it underneath.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from gpufsm.machines import InstanceState
from gpufsm.store import PricePoint  # the store records them; the ledger reads them

__all__ = ["BillingInterval", "PricePoint", "RateBasis"]

SECONDS_PER_HOUR = 3600.0


class RateBasis(enum.StrEnum):
    """What an interval's rate is the price of."""

    PRICE = "price"  # the machine itself: its $/h as the provider reported it
    STORAGE = "storage"  # the disk a stopped machine keeps
    UNCONFIRMED = "unconfirmed"  # a launch the provider has not confirmed: $0, may bill


@dataclass(frozen=True, slots=True)
class BillingInterval:
    """One stretch of time in which one instance billed at one rate.

    ``end`` None: still billing at the ``now`` the ledger was computed for.
    ``estimate`` None: the rate is the provider's own price; otherwise why it is not.
    """

    instance_id: str
    state: InstanceState
    start: datetime
    end: datetime | None
    rate: float  # $/h
    basis: RateBasis
    estimate: str | None = None

    @property
    def known(self) -> bool:
        """The rate is the provider's price, not a guess."""
        return self.estimate is None

    @property
    def is_open(self) -> bool:
        return self.end is None

    def until(self, now: datetime) -> datetime:
        """The end, or ``now`` for an open interval (never before the start)."""
        end = self.end if self.end is not None else now
        return max(end, self.start)

    def hours(self, now: datetime) -> float:
        return (self.until(now) - self.start).total_seconds() / SECONDS_PER_HOUR

    def cost(self, now: datetime) -> float:
        """Dollars: rate * duration (an open interval up to ``now``)."""
        return self.rate * self.hours(now)

    def clipped(self, since: datetime | None, now: datetime) -> BillingInterval | None:
        """The part at or after ``since`` (None: nothing of it is)."""
        if since is None or self.start >= since:
            return self
        if self.until(now) <= since:
            return None
        return replace(self, start=since)
