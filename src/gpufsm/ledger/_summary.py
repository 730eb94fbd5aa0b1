"""Many instances at once: per-row costs, totals by group, the fleet's burn rate.

The ledger is what ``gpufsm cost`` prints and what a budget policy reads, so the
arithmetic lives here once and both agree. A window (``since``) clips each interval to
the part inside it: a machine that ran across the window's start counts only from there.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from gpufsm.ledger._interval import BillingInterval, PricePoint
from gpufsm.ledger._intervals import clip, cost, intervals
from gpufsm.ledger._storage import STORAGE_PRICES, StoragePrice
from gpufsm.store import InstanceRecord, InstanceRows, TransitionRecord

__all__ = ["GroupBy", "GroupTotal", "InstanceCost", "Ledger"]


class GroupBy(enum.StrEnum):
    """What ``Ledger.groups`` adds up by."""

    PROVIDER = "provider"
    NAME = "name"
    TYPE = "type"


#: The group of a row with no name or no type: never confused with a real value.
UNNAMED = "(no name)"
UNTYPED = "(no type)"


@dataclass(frozen=True, slots=True)
class InstanceCost:
    """One instance's intervals inside the window, and what they add up to."""

    record: InstanceRecord
    intervals: tuple[BillingInterval, ...]
    cost: float  # $ inside the window
    burn: float  # $/h at ``now``: the rate of its open interval, 0 if none

    @property
    def estimated(self) -> bool:
        """Some of its figure rests on an estimate."""
        return any(not i.known for i in self.intervals)

    @property
    def estimates(self) -> tuple[str, ...]:
        """Why, each reason once, in the order met."""
        return tuple(dict.fromkeys(i.estimate for i in self.intervals if i.estimate))

    def key(self, by: GroupBy) -> str:
        r = self.record
        if by is GroupBy.PROVIDER:
            return r.provider
        if by is GroupBy.NAME:
            return r.name or UNNAMED
        return r.instance_type or UNTYPED


@dataclass(frozen=True, slots=True)
class GroupTotal:
    """A group's rows and sums."""

    key: str
    rows: tuple[InstanceCost, ...]
    cost: float
    burn: float

    @property
    def estimated(self) -> bool:
        return any(row.estimated for row in self.rows)


@dataclass(frozen=True, slots=True)
class Ledger:
    """Costs of many instances over a window ending at ``now``."""

    rows: tuple[InstanceCost, ...]
    now: datetime
    since: datetime | None = None

    @classmethod
    def of(cls, records: Iterable[InstanceRecord],
           histories: Mapping[str, Sequence[TransitionRecord]], *, now: datetime,
           since: datetime | None = None,
           prices: Mapping[str, Sequence[PricePoint]] | None = None,
           storage: Mapping[str, StoragePrice] = STORAGE_PRICES) -> Ledger:
        """The ledger of ``records`` from their histories. Rows with no interval inside
        the window (finished before it, or never billed) are left out."""
        rows = []
        for record in records:
            found = intervals(record, histories.get(record.id, ()), now=now,
                              prices=(prices or {}).get(record.id, ()), storage=storage)
            inside = tuple(clip(found, since=since, now=now))
            if inside:
                burn = sum(i.rate for i in inside if i.is_open)
                rows.append(InstanceCost(record, inside, cost(inside, now=now), burn))
        rows.sort(key=lambda row: (row.intervals[0].start, row.record.id))
        return cls(tuple(rows), now, since)

    @classmethod
    def read(cls, store: InstanceRows, records: Sequence[InstanceRecord], *, now: datetime,
             since: datetime | None = None) -> Ledger:
        """``of`` with the histories and price points of ``records`` read from ``store``
        (two queries per thousand rows): what every cost shown to a person comes from."""
        ids = [r.id for r in records]
        if not ids:
            return cls((), now, since)
        return cls.of(records, store.history_many(ids), now=now, since=since,
                      prices=store.price_points(ids))

    @property
    def total(self) -> float:
        return sum(row.cost for row in self.rows)

    @property
    def burn_rate(self) -> float:
        """$/h of the machines billing at ``now``."""
        return sum(row.burn for row in self.rows)

    def groups(self, by: GroupBy) -> list[GroupTotal]:
        """Rows added up by provider, name or type, the costliest group first."""
        members: dict[str, list[InstanceCost]] = {}
        for row in self.rows:
            members.setdefault(row.key(by), []).append(row)
        totals = [GroupTotal(key, tuple(rows), sum(r.cost for r in rows),
                             sum(r.burn for r in rows)) for key, rows in members.items()]
        return sorted(totals, key=lambda g: (-g.cost, g.key))

    def estimates(self) -> dict[str, float]:
        """Each reason a figure is an estimate → the dollars that rest on it."""
        out: dict[str, float] = {}
        for row in self.rows:
            for item in row.intervals:
                if item.estimate:
                    out[item.estimate] = out.get(item.estimate, 0.0) + item.cost(self.now)
        return out
