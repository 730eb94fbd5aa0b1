"""Price points: which writes change a row's price, and the points they leave.

A write that sets ``price_micros_per_hour`` to what the row already holds records
nothing (a reconcile pass reports the price on every row it writes). A row's first
price is dated from the row's creation, because the first price the provider reports
is the one the machine was launched at; a change is dated when it was seen, the only
time gpufsm can know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from gpufsm.store import _columns as columns
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import PRICES as _P
from gpufsm.store._columns import chunks

__all__ = ["PRICE", "Before", "final_prices", "points", "read_before", "record"]

#: The column a price is written to (record field ``price_per_hour``).
PRICE = "price_micros_per_hour"

#: id → (the price it holds, in millionths, or None; when the row was created).
Before = Mapping[str, tuple[int | None, datetime]]


def final_prices(instance_id: str, writes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{instance_id: price}`` if any of one row's column writes (in order) sets a
    price; the last one wins. Empty when none does (or sets it to NULL)."""
    price = None
    for values in writes:
        if values.get(PRICE) is not None:
            price = values[PRICE]
    return {} if price is None else {instance_id: price}


def points(wanted: Mapping[str, int], before: Before, at: datetime) -> list[dict[str, Any]]:
    """The price rows for rows about to hold ``wanted[id]``, where that is new."""
    out = []
    for instance_id, price in wanted.items():
        held, created = before[instance_id]
        if price != held:
            out.append({"instance_id": instance_id, PRICE: price,
                        "at": created if held is None else at})
    return out


def read_before(conn: Connection, ids: Sequence[str]) -> dict[str, tuple[int | None, datetime]]:
    """What ``points`` compares with, read in the writing transaction before it writes."""
    found: dict[str, tuple[int | None, datetime]] = {}
    for chunk in chunks(sorted(ids), columns.ID_CHUNK):
        query = select(_I.c.id, _I.c[PRICE], _I.c.created_at).where(_I.c.id.in_(chunk))
        found.update((r[0], (r[1], r[2])) for r in conn.execute(query))
    return found


def record(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(_P), list(rows))
