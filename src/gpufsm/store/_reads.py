"""Reading instance rows, their history and their drift: one row, many rows by id or
tag, whole lists (full records or the slim view a reconcile pass holds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import and_, bindparam, not_, or_, select

from gpufsm.errors import InstanceNotFound
from gpufsm.machines import InstanceState
from gpufsm.store import _columns as columns
from gpufsm.store._base import SqlBase
from gpufsm.store._columns import DRIFTS as _D
from gpufsm.store._columns import HISTORY as _T
from gpufsm.store._columns import INSTANCES as _I
from gpufsm.store._columns import PRICES as _P
from gpufsm.store._columns import (
    RECORD_SELECT,
    TRACKED_SELECT,
    aware,
    chunks,
    dollars,
    drift_record,
    transition_record,
)
from gpufsm.store._engine import gc_paused
from gpufsm.store._records import (
    DriftRecord,
    InstanceRecord,
    PricePoint,
    TrackedInstance,
    TransitionRecord,
)

__all__ = ["RowReads"]

_V = TypeVar("_V")


class RowReads(SqlBase):
    """The reads of the InstanceRows role.

    Lists of many ids are read one statement per ``columns.ID_CHUNK`` ids, looked up on
    the module at call time, so a test can make the chunks small.
    """

    def get(self, instance_id: str) -> InstanceRecord:
        with self._tx() as conn:
            row = conn.execute(select(*RECORD_SELECT).where(_I.c.id == instance_id)).first()
        if row is None:
            raise InstanceNotFound(instance_id)
        return self._record(row)

    def get_many(self, instance_ids: Iterable[str]) -> dict[str, InstanceRecord]:
        """``get`` of many rows in one query per chunk of ids (a pass whose slim rows
        cannot decide reads the full records of those rows at once). Ids with no row are
        left out, not raised."""
        wanted = sorted(set(instance_ids))
        found: dict[str, InstanceRecord] = {}
        with self._tx() as conn:
            for chunk in chunks(wanted, columns.ID_CHUNK):
                for r in conn.execute(select(*RECORD_SELECT).where(_I.c.id.in_(chunk))):
                    record = self._record(r)
                    found[record.id] = record
        return found

    def find(self, provider: str, *, provider_instance_id: str | None = None,
             tag: str | None = None) -> InstanceRecord | None:
        if (provider_instance_id is None) == (tag is None):
            raise ValueError("find by exactly one of provider_instance_id or tag")
        query = select(*RECORD_SELECT).where(_I.c.provider == provider)
        if provider_instance_id is not None:
            query = query.where(_I.c.provider_instance_id == provider_instance_id)
        else:
            query = query.where(_I.c.tag == tag)
        # A live row first: after a wrong "gone", an instance has its TERMINATED row and
        # the live row that adopted it when it turned up again (the newest of those).
        query = query.order_by(_I.c.state == InstanceState.TERMINATED.value,
                               _I.c.created_at.desc(), _I.c.id)
        with self._tx() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else self._record(row)

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]:
        """Every row (or a provider's, or those in ``states``), oldest first."""
        return self._listed(self._record, False, provider, states)

    def list_tracked(self, *, provider: str | None = None,
                     states: Iterable[InstanceState] | None = None
                     ) -> Sequence[TrackedInstance]:
        """What ``list`` returns, as the slim TrackedInstance view: what a pass holds.

        Same rows, same order; no spec, health, error text or update times, so 100k
        rows load in a fraction of the time and memory of 100k InstanceRecords.
        """
        return self._listed(columns.tracked_reader(self._sqlite), True, provider, states)

    def rows_since(self, since: datetime) -> Sequence[InstanceRecord]:
        """Every row that may have billed at or after ``since``, oldest first: what a
        spend budget over a window reads (its ledger clips each row to the window).

        That is every row not finished, and the finished ones that finished at or after
        ``since``. Finished: TERMINATED, or FAILED and not billable (neither bills from
        the time it entered that state on, so one that entered it before ``since`` has
        nothing inside the window). Rows finished long ago, the bulk of an old
        database, are never read.
        """
        aware(since)
        finished = or_(_I.c.state == InstanceState.TERMINATED.value,
                       and_(_I.c.state == InstanceState.FAILED.value,
                            _I.c.billable.is_(False)))
        query = (select(*RECORD_SELECT)
                 .where(or_(not_(finished), _I.c.state_entered_at >= since))
                 .order_by(_I.c.created_at, _I.c.id))
        with self._tx() as conn:
            return [self._record(r) for r in conn.execute(query)]

    def rows_of_runs(self, *, run_ids: Iterable[str] = (),
                     placement_ids: Iterable[str] = ()) -> Sequence[InstanceRecord]:
        """Every row of these recovering runs (``run_id``) and placements
        (``placement_id``), any state, oldest first; a row matching both comes once.

        ``generations`` and ``attempts`` for many at once: a budget on each run's own
        total reads the runs of every row a pass watches in one query per chunk.
        """
        found: dict[str, InstanceRecord] = {}
        with self._tx() as conn:
            for column, values in ((_I.c.run_id, sorted(set(run_ids))),
                                   (_I.c.placement_id, sorted(set(placement_ids)))):
                for chunk in chunks(values, columns.ID_CHUNK):
                    for row in conn.execute(select(*RECORD_SELECT).where(column.in_(chunk))):
                        record = self._record(row)
                        found.setdefault(record.id, record)
        return sorted(found.values(), key=lambda r: (r.created_at, r.id))

    def find_tracked(self, provider: str, *, tags: Iterable[str] = (),
                     provider_instance_ids: Iterable[str] = ()) -> Sequence[TrackedInstance]:
        """The rows of ``provider`` carrying any of these tags or provider ids, slim.

        ``find`` for many at once (a reconcile pass matching a whole listing against its
        rows): one query per chunk of values instead of one per value. Any state, oldest
        first; a row matching both a tag and an id comes once.
        """
        read = columns.tracked_reader(self._sqlite)
        found: dict[str, TrackedInstance] = {}
        with self._tx() as conn:
            for column, values in ((_I.c.tag, sorted(set(tags))),
                                   (_I.c.provider_instance_id, sorted(set(provider_instance_ids)))):
                for chunk in chunks(values, columns.ID_CHUNK):
                    query = select(*TRACKED_SELECT).where(_I.c.provider == provider,
                                                          column.in_(chunk))
                    for row in conn.execute(query):
                        found.setdefault(row[0], read(row))
        return sorted(found.values(), key=lambda r: (r.created_at, r.id))

    def _listed(self, read: Callable[[Sequence[Any]], _V], tracked: bool,
                provider: str | None, states: Iterable[InstanceState] | None) -> Sequence[_V]:
        params: dict[str, Any] = {}
        if provider is not None:
            params["provider"] = provider
        if states is not None:
            params["states"] = [InstanceState(s).value for s in states]
            if not params["states"]:
                return []
        key = (tracked, provider is not None, states is not None)
        query = self._lists.get(key)
        if query is None:
            query = select(*(TRACKED_SELECT if tracked else RECORD_SELECT)).order_by(
                _I.c.created_at, _I.c.id)
            if provider is not None:
                query = query.where(_I.c.provider == bindparam("provider"))
            if states is not None:
                query = query.where(_I.c.state.in_(bindparam("states", expanding=True)))
            self._lists[key] = query
        with self._tx() as conn, gc_paused():
            # The driver's own tuples, one at a time: the columns are selected raw (no
            # result processing to do), so SQLAlchemy's Row objects would only be made to
            # be thrown away; and not fetchall(), which would hold every raw row (and its
            # timestamp texts) beside the records being built: +75 MB at 100k rows.
            result = conn.execute(query, params)
            try:
                rows = cast(Iterable[Sequence[Any]], result.cursor)  # DB-API cursors iterate
                return [read(r) for r in rows]
            finally:
                result.close()

    def history(self, instance_id: str) -> Sequence[TransitionRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_T).where(_T.c.instance_id == instance_id).order_by(_T.c.seq)
            ).all()
        return [transition_record(r) for r in rows]

    def history_many(self, instance_ids: Iterable[str]
                     ) -> dict[str, Sequence[TransitionRecord]]:
        """``history`` of many rows in one query per chunk of ids (a reconcile pass reads
        the terminate attempts of every TERMINATING row at once). Every id asked for is
        a key; a row with no history (or no row) maps to an empty list."""
        wanted = sorted(set(instance_ids))
        found: dict[str, Any] = {i: [] for i in wanted}
        with self._tx() as conn:
            for chunk in chunks(wanted, columns.ID_CHUNK):
                rows = conn.execute(
                    select(_T).where(_T.c.instance_id.in_(chunk)).order_by(_T.c.seq)).all()
                for r in rows:
                    found[r.instance_id].append(transition_record(r))
        return found

    def price_points(self, instance_ids: Iterable[str]) -> dict[str, Sequence[PricePoint]]:
        """Each row's prices as they changed, oldest first (``_prices`` says when points
        are written); the ledger splits billing at them. Every id asked for is a key."""
        wanted = sorted(set(instance_ids))
        found: dict[str, list[PricePoint]] = {i: [] for i in wanted}
        with self._tx() as conn:
            for chunk in chunks(wanted, columns.ID_CHUNK):
                query = (select(_P.c.instance_id, _P.c.price_micros_per_hour, _P.c.at)
                         .where(_P.c.instance_id.in_(chunk)).order_by(_P.c.seq))
                for instance_id, micros, at in conn.execute(query):
                    found[instance_id].append(PricePoint(at, dollars(micros) or 0.0))
        return dict(found)

    def drift(self, instance_id: str) -> Sequence[DriftRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(_D).where(_D.c.instance_id == instance_id).order_by(_D.c.seq)
            ).all()
        return [drift_record(r) for r in rows]
