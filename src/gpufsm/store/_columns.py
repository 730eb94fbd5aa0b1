"""Rows ↔ records: the tables, how each column's value becomes a record field and back.

Rows are read as raw driver values (see ``raw``) and turned into records by one closure
per store, with each conversion named by its column: no per-column SQLAlchemy type
objects, no mapping look-ups per value. On 100k rows every attribute access shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Row, Table, type_coerce
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store._models import DriftRow, InstanceRow, OutboxRow, PriceRow, TransitionRow
from gpufsm.store._records import (
    MUTABLE_FIELDS,
    DriftRecord,
    InstanceRecord,
    Move,
    OutboxMessage,
    TrackedInstance,
    TransitionRecord,
)

__all__ = [
    "DRIFTS", "HISTORY", "ID_CHUNK", "INSTANCES", "OUTBOX", "PRICES", "RECORD_SELECT",
    "TRACKED_SELECT", "aware", "checked", "chunks", "column_values", "dollars", "drift_record",
    "history_row", "outbox_message", "outbox_rows", "record_reader", "to_row", "tracked_reader",
    "transition_record", "update_params",
]

INSTANCES = cast(Table, InstanceRow.__table__)
HISTORY = cast(Table, TransitionRow.__table__)
DRIFTS = cast(Table, DriftRow.__table__)
OUTBOX = cast(Table, OutboxRow.__table__)
PRICES = cast(Table, PriceRow.__table__)

#: One statement's worth of ids: well under SQLite's and PostgreSQL's parameter limits.
ID_CHUNK = 1000

#: Record fields stored under another column name, in another unit (see ``_micros``).
_COLUMN_OF = {"price_per_hour": "price_micros_per_hour"}
_MICROS = 1_000_000
_V = TypeVar("_V")


def _micros(price: float | None) -> int | None:
    """Dollars per hour → integer millionths: money is stored exactly (no 0.35000000000000003).

    Providers quote at most cents of a cent, so a millionth of a dollar loses nothing.
    """
    return None if price is None else round(price * _MICROS)


def dollars(micros: int | None) -> float | None:
    """The stored millionths → the float nearest to the exact price (350000 → 0.35)."""
    return None if micros is None else micros / _MICROS


def _raw(names: Iterable[str]) -> list[ColumnElement[Any]]:
    """The columns as the driver returns them: no SQLAlchemy result processing.

    The record readers convert each value themselves, once, in one closure: the
    per-value type processors (and the UtcDateTime decorator) were most of list()'s time.
    """
    return [type_coerce(INSTANCES.c[_COLUMN_OF.get(name, name)], NullType()).label(name)
            for name in names]


#: Selected in the records' own field order, so field ``name`` is at ``_AT[name]``.
_RECORD_COLUMNS: tuple[str, ...] = tuple(InstanceRecord.__dataclass_fields__)
_TRACKED_COLUMNS: tuple[str, ...] = TrackedInstance._fields
RECORD_SELECT = _raw(_RECORD_COLUMNS)
TRACKED_SELECT = _raw(_TRACKED_COLUMNS)
_STATES: dict[str, InstanceState] = {s.value: s for s in InstanceState}
_EVENTS: dict[str, Event] = {e.value: e for e in Event}


def _state(value: str) -> InstanceState:
    return _STATES.get(value) or InstanceState(value)  # the enum names a bad value


def _state_or_none(value: str | None) -> InstanceState | None:
    return None if value is None else _state(value)


def _event(value: str) -> Event:
    return _EVENTS.get(value) or Event(value)


def _json_value(value: Any) -> Any:
    # SQLite hands back the JSON text; psycopg has decoded it already
    return json.loads(value) if isinstance(value, str | bytes) else value


def _sqlite_stamp(value: str | datetime | None) -> datetime | None:
    """SQLite keeps naive UTC text ("2026-01-01 00:00:00.000000"): the zone goes back on.

    The text as stored (19 or 26 characters, no offset) is parsed with its zone in one
    call: a row has three stamps, and a pass reads 100k rows.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) in _NAIVE_LENGTHS:
            return datetime.fromisoformat(value + "+00:00")
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: "YYYY-MM-DD HH:MM:SS" and "YYYY-MM-DD HH:MM:SS.ffffff": naive, as UtcDateTime stores.
_NAIVE_LENGTHS = (19, 26)


def _aware_stamp(value: datetime | None) -> datetime | None:
    """What UtcDateTime.process_result_value does, for drivers that return datetimes."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: The record's datetime fields (a test checks this against the dataclass).
_STAMPS = ("created_at", "updated_at", "state_entered_at", "last_seen_at", "accepted_at",
           "missing_since")


def _record_conversions(sqlite: bool) -> dict[str, Callable[[Any], Any]]:
    """Column name → how its raw value becomes the field; a column not named is kept."""
    stamp = _sqlite_stamp if sqlite else _aware_stamp
    conversions: dict[str, Callable[[Any], Any]] = {
        "state": _state, "previous_state": _state_or_none, "entered_by": _event,
        "billable": bool, "spec": _json_value, "health": _json_value,
        "price_per_hour": dollars, "missing_count": lambda v: v or 0,
    }
    conversions.update(dict.fromkeys(_STAMPS, stamp))
    return conversions


def record_reader(sqlite: bool) -> Callable[[Sequence[Any]], InstanceRecord]:
    """Raw row (``RECORD_SELECT``) → InstanceRecord, for one backend: the columns that
    need converting, by name, and the rest as the driver gave them."""
    conversions = _record_conversions(sqlite)
    steps = tuple((_RECORD_COLUMNS.index(name), convert)
                  for name, convert in conversions.items())

    def record(v: Sequence[Any]) -> InstanceRecord:
        values = list(v)
        for at, convert in steps:
            values[at] = convert(values[at])
        return InstanceRecord(*values)

    return record


# Positions of the slim view's columns, by name: the tracked reader is the hot path of a
# 100k-row pass, so it indexes by constant rather than looping over conversions.
(_ID, _PROVIDER, _STATE, _VERSION, _PID, _TAG, _NAME, _BILLABLE, _CREATED, _ENTERED,
 _PREVIOUS, _ENTERED_BY, _RAW_STATUS, _IP, _PRICE, _ACCEPTED, _MISSING, _REGION) = range(
    len(_TRACKED_COLUMNS))
assert _TRACKED_COLUMNS[_REGION] == "region" and _TRACKED_COLUMNS[_PRICE] == "price_per_hour"


def tracked_reader(sqlite: bool) -> Callable[[Sequence[Any]], TrackedInstance]:
    """Raw row (``TRACKED_SELECT``) → TrackedInstance; make one per list.

    Values that repeat across a fleet (provider names, raw statuses, prices) are shared
    through a dict that lives as long as the reader, which saves ~100 bytes per row.
    """
    stamp = _sqlite_stamp if sqlite else _aware_stamp
    common: dict[Any, Any] = {}
    share = common.setdefault
    states, events, state, event_of = _STATES, _EVENTS, _state, _event
    tuple_new = tuple.__new__
    tracked_cls = TrackedInstance

    def tracked(v: Sequence[Any]) -> TrackedInstance:
        prev, raw, price, accepted, region = (v[_PREVIOUS], v[_RAW_STATUS], v[_PRICE],
                                              v[_ACCEPTED], v[_REGION])
        # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python call
        return tuple_new(tracked_cls, (
            v[_ID], share(v[_PROVIDER], v[_PROVIDER]),
            states.get(v[_STATE]) or state(v[_STATE]), v[_VERSION], v[_PID], v[_TAG],
            v[_NAME], bool(v[_BILLABLE]), stamp(v[_CREATED]), stamp(v[_ENTERED]),
            None if prev is None else (states.get(prev) or state(prev)),
            events.get(v[_ENTERED_BY]) or event_of(v[_ENTERED_BY]),
            None if raw is None else share(raw, raw), v[_IP],
            None if price is None else share(price, price / _MICROS),
            None if accepted is None else stamp(accepted), v[_MISSING] or 0,
            None if region is None else share(region, region),
        ))

    return tracked


def chunks(items: Sequence[_V], size: int) -> Iterator[Sequence[_V]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def aware(*stamps: datetime) -> None:
    for stamp in stamps:
        if stamp.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")


def checked(changes: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(changes or {})
    if unknown := set(values) - MUTABLE_FIELDS:
        raise ValueError(f"not a mutable instance field: {sorted(unknown)}")
    return values


def to_row(record: InstanceRecord) -> dict[str, Any]:
    """A new record → the values of its INSERT."""
    return column_values({name: getattr(record, name) for name in _RECORD_COLUMNS})


_ENUM_COLUMNS = ("state", "previous_state", "entered_by")


def column_values(written: dict[str, Any]) -> dict[str, Any]:
    """Record fields → column values, in place: enums to their strings, the price to its
    exact column (millionths of a dollar)."""
    for name in _ENUM_COLUMNS:
        value = written.get(name)
        if value is not None:
            written[name] = value.value
    if "price_per_hour" in written:
        written["price_micros_per_hour"] = _micros(written.pop("price_per_hour"))
    return written


def update_params(move: Move, values: Mapping[str, Any]) -> dict[str, Any]:
    params = {f"v_{k}": v for k, v in values.items()}
    params.update(w_id=move.instance_id, w_version=move.expected_version,
                  w_state=move.from_state.value)
    return params


def history_row(move: Move, actor: str, at: datetime) -> dict[str, Any]:
    return {"instance_id": move.instance_id, "from_state": move.from_state.value,
            "to_state": move.to_state.value, "event": move.event.value,
            "kind": move.kind.value, "actor": actor, "reason": move.reason,
            "raw_status": move.raw_status, "version": move.expected_version + 1, "at": at}


def outbox_rows(move: Move, at: datetime) -> list[dict[str, Any]]:
    return [{"instance_id": move.instance_id, "url": url, "payload": payload,
             "created_at": at, "attempts": 0, "next_attempt_at": at}
            for url, payload in move.outbox]


def transition_record(r: Row[Any]) -> TransitionRecord:
    return TransitionRecord(
        seq=r.seq, instance_id=r.instance_id,
        from_state=None if r.from_state is None else InstanceState(r.from_state),
        to_state=InstanceState(r.to_state), event=Event(r.event),
        kind=EdgeKind(r.kind), actor=r.actor, version=r.version, at=r.at,
        reason=r.reason, raw_status=r.raw_status,
    )


def drift_record(r: Row[Any]) -> DriftRecord:
    return DriftRecord(r.seq, r.instance_id, InstanceState(r.state), Event(r.event), r.actor,
                       r.at, r.raw_status, r.reason)


def outbox_message(row: Row[Any]) -> OutboxMessage:
    m = row._mapping
    return OutboxMessage(
        seq=m["seq"], instance_id=m["instance_id"], url=m["url"], payload=m["payload"],
        created_at=m["created_at"], attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"], delivered_at=m["delivered_at"],
        last_error=m["last_error"],
    )
