"""Writing instance rows: insert, transitions (one, or a batch of whole decisions),
facts, drift. Every write checks the version the caller read, and a transition commits
with its history row and its outbox messages, or not at all.

A reconcile pass over a large fleet writes through ``apply_batch``: every row's moves,
drift and facts in one transaction, one ``executemany`` per statement shape, and the
rows that moved on since they were read reported (conflicts) instead of raised, so one
stale row does not cost the others a commit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select

from gpufsm.errors import InstanceNotFound, VersionConflict
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store import _columns as columns
from gpufsm.store import _prices as prices
from gpufsm.store._base import SqlBase
from gpufsm.store._columns import DRIFTS as _D
from gpufsm.store._columns import HISTORY as _T
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import OUTBOX as _O
from gpufsm.store._columns import (
    aware,
    checked,
    chunks,
    column_values,
    history_row,
    outbox_rows,
    to_row,
    update_params,
)
from gpufsm.store._records import (
    BatchOutcome,
    DriftRecord,
    InstanceRecord,
    Move,
    RowWrite,
)

__all__ = ["RowWrites"]

log = logging.getLogger("gpufsm.store")

#: How often a batch is re-run when a concurrent writer slipped into it (SQLite reads
#: before it takes the write lock) before each row is written on its own.
_BATCH_ATTEMPTS = 3


#: A row as a batch reads it first: version, state, price (millionths), created_at.
_Position = tuple[int, str, int | None, datetime]
_ABSENT: tuple[None, None] = (None, None)


class _Raced(Exception):
    """A batch's UPDATE matched fewer rows than its read promised: run it again."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A RowWrite checked, with the column values of its moves and of its facts."""

    write: RowWrite
    moves: tuple[dict[str, Any], ...]
    facts: dict[str, Any] | None

    @classmethod
    def of(cls, write: RowWrite, at: datetime) -> _Prepared:
        write.check()
        facts = None
        if write.facts is not None:
            facts = column_values(checked(write.facts))
            facts["updated_at"] = at
        return cls(write, tuple(column_values(m.written(at)) for m in write.moves), facts)


class RowWrites(SqlBase):
    """The writes of the InstanceRows role."""

    def insert(self, record: InstanceRecord, *, actor: str, reason: str | None = None,
               outbox: Sequence[tuple[str, dict[str, Any]]] = (),
               then: Sequence[Move] = ()) -> InstanceRecord:
        """Insert a new row in its initial state with its launch history row.

        ``then``: moves applied to the new row in the same transaction, each with its
        history row (and outbox messages), in order. An instance adopted to be
        terminated goes in as launch → observed_created → terminate at once: a crash can
        leave it TERMINATING or absent, never as a live row nobody means to terminate.
        Returns the row after the last move.
        """
        aware(record.created_at, record.updated_at, record.state_entered_at)
        at = record.created_at
        with self._tx() as conn:
            values = to_row(record)
            conn.execute(insert(_I).values(values))
            prices.record(conn, prices.points(prices.final_prices(record.id, [values]),
                                              {record.id: (None, at)}, at))
            conn.execute(insert(_T).values(
                instance_id=record.id, from_state=None, to_state=record.state.value,
                event=Event.LAUNCH.value, kind=EdgeKind.COMMAND.value, actor=actor,
                reason=reason, raw_status=None, version=record.version, at=at,
            ))
            if outbox:
                conn.execute(insert(_O), [
                    {"instance_id": record.id, "url": url, "payload": payload,
                     "created_at": at, "attempts": 0, "next_attempt_at": at}
                    for url, payload in outbox])
            row: Row[Any] | None = None
            for move in then:
                if move.instance_id != record.id:
                    raise ValueError("insert(then=...) moves the inserted row only")
                row = self._moved(conn, move, actor, at)
        return record if row is None else self._record(row)

    def transition(self, move: Move, *, actor: str, at: datetime) -> InstanceRecord:
        """Apply ``move`` and append its history, atomically, if nobody moved the row
        first (VersionConflict; InstanceNotFound for a row that is not there).

        The move's outbox messages commit in the same transaction, so a transition is
        announced if and only if it happened.
        """
        aware(at)
        with self._tx() as conn:
            row = self._moved(conn, move, actor, at)
        return self._record(row)

    def _moved(self, conn: Connection, move: Move, actor: str, at: datetime) -> Row[Any]:
        values = column_values(move.written(at))
        new_price = _price_points(conn, move.instance_id, values, at)
        row = conn.execute(
            self._update_stmt(frozenset(values), checks_state=True, returning=True),
            update_params(move, values)).first()
        if row is None:
            _raise_missing_or_conflict(conn, move.instance_id, move.expected_version)
        conn.execute(insert(_T), history_row(move, actor, at))
        if move.outbox:
            conn.execute(insert(_O), outbox_rows(move, at))
        prices.record(conn, new_price)
        assert row is not None
        return row

    def transition_many(self, moves: Sequence[Move], *, actor: str, at: datetime
                        ) -> BatchOutcome:
        """``apply_batch`` of one move per row: many transitions in one transaction,
        the stale ones reported in ``conflicts`` instead of raised."""
        return self.apply_batch([RowWrite.of(m) for m in moves], actor=actor, at=at)

    def apply_batch(self, writes: Sequence[RowWrite], *, actor: str, at: datetime
                    ) -> BatchOutcome:
        """Commit many rows' writes (moves, drift, facts) in one transaction.

        Each RowWrite is applied whole or not at all: one whose row is no longer at its
        expected version and state (or no longer exists) writes nothing and is listed in
        ``conflicts``, and the others still commit. On PostgreSQL the rows are locked
        first (in id order, so two batches cannot deadlock); SQLite has a single writer,
        and a writer that slips in between this batch's read and its update only makes
        it run again. At most one RowWrite per row. A database error raises StoreError
        and writes nothing.
        """
        aware(at)
        if not writes:
            return BatchOutcome({})
        ids = [w.instance_id for w in writes]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch takes at most one write (and its moves) per instance")
        prepared = [_Prepared.of(w, at) for w in writes]  # every write checked up front
        for _ in range(_BATCH_ATTEMPTS):
            try:
                return self._apply(prepared, actor, at)
            except _Raced:
                log.info("a concurrent writer moved rows of a batch of %d: running it again",
                         len(prepared))
        return self._apply_one_by_one(prepared, actor, at)

    def _apply(self, prepared: Sequence[_Prepared], actor: str, at: datetime
               ) -> BatchOutcome:
        with self._tx() as conn:
            current = self._positions(conn, [p.write.instance_id for p in prepared])
            go = [p for p in prepared if current.get(p.write.instance_id, _ABSENT)[:2]
                  == (p.write.expected_version, p.write.state.value)]
            wanted: dict[str, int] = {}
            for p in go:
                wanted.update(prices.final_prices(p.write.instance_id, [*p.moves, p.facts or {}]))
            new_prices = prices.points(wanted, {i: current[i][2:] for i in wanted}, at)
            for round_ in range(max((len(p.moves) for p in go), default=0)):
                self._update_grouped(conn, [
                    (p.moves[round_], update_params(p.write.moves[round_], p.moves[round_]))
                    for p in go if len(p.moves) > round_], checks_state=True)
            moves = [m for p in go for m in p.write.moves]
            if moves:
                conn.execute(insert(_T), [history_row(m, actor, at) for m in moves])
                mail = [row for m in moves for row in outbox_rows(m, at)]
                if mail:
                    conn.execute(insert(_O), mail)
            drifts = [_drift_row(p.write, actor, at) for p in go if p.write.drift]
            if drifts:
                conn.execute(insert(_D), drifts)
            self._update_grouped(conn, [(p.facts, _facts_params(p)) for p in go
                                        if p.facts is not None], checks_state=False)
            prices.record(conn, new_prices)
        taken = {p.write.instance_id for p in go}
        return BatchOutcome({p.write.instance_id: p.write.final_version for p in go},
                            tuple(p.write.instance_id for p in prepared
                                  if p.write.instance_id not in taken))

    def _update_grouped(self, conn: Connection,
                        items: Sequence[tuple[dict[str, Any], dict[str, Any]]], *,
                        checks_state: bool) -> None:
        """One ``executemany`` per set of columns; _Raced if any row was not matched."""
        groups: dict[frozenset[str], list[dict[str, Any]]] = {}
        for values, params in items:
            groups.setdefault(frozenset(values), []).append(params)
        for names, batch in groups.items():
            stmt = self._update_stmt(names, checks_state=checks_state, returning=False)
            if conn.execute(stmt, batch).rowcount != len(batch):
                raise _Raced  # rolls the whole batch back

    def _positions(self, conn: Connection, ids: Sequence[str]) -> dict[str, _Position]:
        """id → (version, state, price, created_at) of these rows; locked on PostgreSQL,
        in id order. The price and creation time say whether a write changes the price
        (``_prices``), read here so that costs no statement of its own."""
        found: dict[str, _Position] = {}
        for chunk in chunks(sorted(ids), columns.ID_CHUNK):
            query = select(_I.c.id, _I.c.version, _I.c.state, _I.c[prices.PRICE],
                           _I.c.created_at).where(_I.c.id.in_(chunk))
            if not self._sqlite:
                # NO KEY UPDATE: the lock the UPDATE itself takes (the key never changes),
                # so history inserts elsewhere that reference these rows are not blocked
                query = query.order_by(_I.c.id).with_for_update(key_share=True)
            found.update((r[0], (r[1], r[2], r[3], r[4])) for r in conn.execute(query))
        return found

    def _apply_one_by_one(self, prepared: Sequence[_Prepared], actor: str, at: datetime
                          ) -> BatchOutcome:
        """The last resort when batches keep racing: each row in its own transaction."""
        applied: dict[str, int] = {}
        conflicts: list[str] = []
        for p in prepared:
            try:
                outcome = self._apply([p], actor, at)
            except _Raced:
                conflicts.append(p.write.instance_id)
            else:
                applied.update(outcome.applied)
                conflicts.extend(outcome.conflicts)
        return BatchOutcome(applied, tuple(conflicts))

    def update(self, instance_id: str, *, expected_version: int, at: datetime,
               changes: Mapping[str, Any]) -> InstanceRecord:
        """Change facts about the row (ip, raw status …) without a transition.

        The version is checked but not bumped: ``version`` counts transitions, and these
        facts are last-writer-wins reports from the provider, equally true from any writer.
        """
        aware(at)
        values = column_values(checked(changes))
        values["updated_at"] = at
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(w_id=instance_id, w_version=expected_version)
        with self._tx() as conn:
            new_price = _price_points(conn, instance_id, values, at)
            row = conn.execute(
                self._update_stmt(frozenset(values), checks_state=False, returning=True),
                params).first()
            if row is None:
                _raise_missing_or_conflict(conn, instance_id, expected_version)
            prices.record(conn, new_price)
        assert row is not None
        return self._record(row)

    def record_drift(self, instance_id: str, *, state: InstanceState, event: Event,
                     actor: str, at: datetime, raw_status: str | None = None,
                     reason: str | None = None) -> DriftRecord:
        aware(at)
        with self._tx() as conn:
            seq = conn.execute(insert(_D).values(
                instance_id=instance_id, state=state.value, event=event.value, actor=actor,
                raw_status=raw_status, reason=reason, at=at,
            ).returning(_D.c.seq)).scalar_one()
        return DriftRecord(seq, instance_id, state, event, actor, at, raw_status, reason)


def _price_points(conn: Connection, instance_id: str, values: Mapping[str, Any],
                  at: datetime) -> list[dict[str, Any]]:
    """The price point one row's write leaves, read before it writes (one SELECT, only
    when the write sets a price)."""
    wanted = prices.final_prices(instance_id, [values])
    if not wanted:
        return []
    before = prices.read_before(conn, [instance_id])
    return prices.points(wanted, before, at) if instance_id in before else []


def _raise_missing_or_conflict(conn: Connection, instance_id: str, expected: int) -> None:
    found = conn.execute(select(_I.c.version).where(_I.c.id == instance_id)).first()
    if found is None:
        raise InstanceNotFound(instance_id)
    raise VersionConflict(instance_id, expected)


def _drift_row(write: RowWrite, actor: str, at: datetime) -> dict[str, Any]:
    drift = write.drift
    assert drift is not None
    return {"instance_id": write.instance_id, "state": write.final_state.value,
            "event": drift.event.value, "actor": actor, "raw_status": drift.raw_status,
            "reason": drift.reason, "at": at}


def _facts_params(p: _Prepared) -> dict[str, Any]:
    assert p.facts is not None
    params = {f"v_{k}": v for k, v in p.facts.items()}
    params.update(w_id=p.write.instance_id, w_version=p.write.final_version)
    return params
