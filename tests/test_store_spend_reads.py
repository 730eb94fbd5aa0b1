"""The store reads a spend budget relies on, on SQLite and PostgreSQL: ``rows_since``
(every row that may have billed inside a window) and ``rows_of_runs`` (every row of
some runs and placements)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store import InstanceRecord, InstanceRows, Move, SqlInstanceStore
from gpufsm.store import _columns as columns

S = InstanceState
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SINCE = T0 + timedelta(hours=10)


def put(store: SqlInstanceStore, state: S, entered: datetime, *, billable: bool = True,
        created: datetime = T0, **fields: object) -> InstanceRecord:
    """A row launched at ``created`` and moved into ``state`` at ``entered``."""
    token = uuid.uuid4().hex[:16]
    record = InstanceRecord(
        id=str(uuid.uuid4()), provider="sim", state=S.CREATING, version=1,
        client_token=token, tag=f"gpufsm-{token}", name="job", billable=True,
        spec={"provider": "sim"}, created_at=created, updated_at=created,
        state_entered_at=created, price_per_hour=1.0, **fields)  # type: ignore[arg-type]
    record = store.insert(record, actor="t")
    if state is not S.CREATING:
        record = store.transition(Move(record.id, record.version, S.CREATING, state,
                                       Event.OBSERVED_CREATED, EdgeKind.OBSERVATION,
                                       changes={"billable": billable}),
                                  actor="t", at=entered)
    return record


def test_the_store_offers_the_spend_reads(store: SqlInstanceStore) -> None:
    assert isinstance(store, InstanceRows)


def test_rows_since_reads_what_may_have_billed_inside_the_window(
        store: SqlInstanceStore) -> None:
    before, after = SINCE - timedelta(seconds=1), SINCE + timedelta(hours=1)
    wanted = {
        "running long": put(store, S.RUNNING, T0),
        "stopped long": put(store, S.STOPPED, T0),
        "failed, may bill": put(store, S.FAILED, T0, billable=True),
        "ended at since": put(store, S.TERMINATED, SINCE, billable=False),
        "ended after": put(store, S.TERMINATED, after, billable=False),
        "failed after": put(store, S.FAILED, after, billable=False),
        "terminating": put(store, S.TERMINATING, T0),
    }
    unwanted = [put(store, S.TERMINATED, before, billable=False),
                put(store, S.FAILED, before, billable=False)]
    found = store.rows_since(SINCE)
    assert {r.id for r in found} == {r.id for r in wanted.values()}
    assert not {r.id for r in unwanted} & {r.id for r in found}
    assert [r.id for r in found] == [r.id for r in sorted(found, key=lambda r: (r.created_at,
                                                                               r.id))]
    assert store.get(wanted["ended after"].id) in found  # full records, as get reads them
    assert store.rows_since(after + timedelta(days=1)) != []  # live rows always
    with pytest.raises(ValueError, match="naive"):
        store.rows_since(SINCE.replace(tzinfo=None))


def test_rows_of_runs_reads_every_row_of_the_runs_and_placements(
        store: SqlInstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns, "ID_CHUNK", 1)  # several chunks, one row each
    later = T0 + timedelta(minutes=1)
    run_a = [put(store, S.TERMINATED, T0, run_id="run-a", generation=1, billable=False),
             put(store, S.RUNNING, T0, created=later, run_id="run-a", generation=2)]
    place = [put(store, S.FAILED, T0, placement_id="p-1", billable=False),
             put(store, S.RUNNING, T0, created=later, placement_id="p-1")]
    both = put(store, S.RUNNING, T0, run_id="run-b", placement_id="p-2")
    others = [put(store, S.RUNNING, T0), put(store, S.RUNNING, T0, run_id="run-c"),
              put(store, S.RUNNING, T0, placement_id="p-3")]
    found = store.rows_of_runs(run_ids=["run-a", "run-b", "run-a"],
                               placement_ids=["p-1", "p-2"])
    assert sorted(r.id for r in found) == sorted(r.id for r in [*run_a, *place, both])
    assert len(found) == len({r.id for r in found})  # ``both`` matched twice, kept once
    assert [r.created_at for r in found] == sorted(r.created_at for r in found)
    assert not {r.id for r in others} & {r.id for r in found}
    assert store.rows_of_runs() == []
