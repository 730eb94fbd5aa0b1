"""Batched writes and slim reads: the contract of transition_many, list_tracked and
find_tracked, and that the faster record readers return exactly what they used to.

Runs on SQLite and, when GPUFSM_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import gc
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from gpufsm.errors import StoreError, VersionConflict
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store import (
    BatchOutcome,
    InstanceRecord,
    InstanceStore,
    Move,
    SqlInstanceStore,
    TrackedInstance,
    _columns,
)

S = InstanceState
E = Event
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def row(**overrides: object) -> InstanceRecord:
    token = uuid.uuid4().hex[:16]
    values: dict[str, object] = dict(
        id=str(uuid.uuid4()), provider="sim", state=S.RUNNING, version=3,
        client_token=token, tag=f"gpufsm-{token}", name="job", billable=True,
        spec={"provider": "sim", "instance_type": "gpu_1x_a10", "env": {"A": "1"}},
        created_at=T0, updated_at=T0, state_entered_at=T0, instance_type="gpu_1x_a10",
        provider_instance_id=f"sim-{token}", region="us-east-1", price_per_hour=0.75,
        ip="127.0.0.9", last_raw_status="running", previous_state=S.STARTING,
        entered_by=E.OBSERVED_RUNNING, last_seen_at=T0,
    )
    values.update(overrides)
    return InstanceRecord(**values)  # type: ignore[arg-type]


def died(rec: InstanceRecord, **kw: object) -> Move:
    """RUNNING → FAILED as a reconcile pass writes it: facts ride along."""
    values: dict[str, object] = dict(
        instance_id=rec.id, expected_version=rec.version, from_state=rec.state,
        to_state=S.FAILED, event=E.OBSERVED_FAILED, kind=EdgeKind.OBSERVATION,
        reason="provider: unhealthy", raw_status="unhealthy",
        changes={"last_seen_at": T1, "last_error": "disk"})
    values.update(kw)
    return Move(**values)  # type: ignore[arg-type]


def single(store: InstanceStore, move: Move, *, actor: str, at: datetime) -> InstanceRecord:
    return store.transition(move, actor=actor, at=at)


def without_ids(rec: InstanceRecord) -> InstanceRecord:
    return replace(rec, id="", client_token="", tag="", provider_instance_id=None)


# -- transition_many: the contract ------------------------------------------------------


def test_a_batch_writes_what_single_transitions_write(store: SqlInstanceStore) -> None:
    """Rows, history and outbox after one batch equal those after one call per move."""
    twins = [(store.insert(row(), actor="t"), store.insert(row(), actor="t"))
             for _ in range(3)]
    moves = [
        lambda r: died(r, outbox=[("http://hook/1", {"n": 1})]),
        lambda r: Move(r.id, r.version, S.RUNNING, S.RUNNING, E.OBSERVED_RUNNING,
                       EdgeKind.OBSERVATION, raw_status="active"),  # same state: no entry
        lambda r: Move(r.id, r.version, S.RUNNING, S.TERMINATED, E.OBSERVED_GONE,
                       EdgeKind.OBSERVATION, reason="gone",
                       changes={"billable": False, "ip": None}),
    ]
    for (a, _), make in zip(twins, moves, strict=True):
        single(store, make(a), actor="daemon", at=T1)
    outcome = store.transition_many([make(b) for (_, b), make in zip(twins, moves,
                                                                     strict=True)],
                                    actor="daemon", at=T1)
    assert outcome == BatchOutcome({b.id: 4 for _, b in twins}, ())
    for a, b in twins:
        assert without_ids(store.get(b.id)) == without_ids(store.get(a.id))
        hist = [(h.from_state, h.to_state, h.event, h.kind, h.actor, h.version, h.at,
                 h.reason, h.raw_status) for h in store.history(a.id)]
        assert [(h.from_state, h.to_state, h.event, h.kind, h.actor, h.version, h.at,
                 h.reason, h.raw_status) for h in store.history(b.id)] == hist
        assert [(m.url, m.payload, m.created_at) for m in store.outbox(b.id)] == [
            (m.url, m.payload, m.created_at) for m in store.outbox(a.id)]
    first = store.get(twins[0][1].id)
    assert (first.state, first.version, first.previous_state, first.entered_by) == (
        S.FAILED, 4, S.RUNNING, E.OBSERVED_FAILED)
    assert (first.state_entered_at, first.last_raw_status, first.last_error) == (
        T1, "unhealthy", "disk")
    same = store.get(twins[1][1].id)
    assert same.state_entered_at == T0 and same.previous_state is S.STARTING


def test_stale_and_missing_rows_are_conflicts_and_the_rest_commit(
        store: SqlInstanceStore) -> None:
    ok, moved, wrong_state = (store.insert(row(), actor="t") for _ in range(3))
    single(store, died(moved), actor="other", at=T0)  # someone else got there first
    ghost = row()  # never inserted
    moves = [died(ok), died(moved), died(wrong_state, from_state=S.STARTING), died(ghost)]
    outcome = store.transition_many(moves, actor="daemon", at=T1)
    assert outcome.applied == {ok.id: 4}
    assert outcome.conflicts == (moved.id, wrong_state.id, ghost.id)
    assert store.get(ok.id).state is S.FAILED
    assert [h.actor for h in store.history(moved.id)] == ["t", "other"]  # untouched
    assert store.get(wrong_state.id) == wrong_state
    assert len(store.history(wrong_state.id)) == 1


def test_a_conflicting_move_writes_none_of_its_parts(store: SqlInstanceStore) -> None:
    """Per move all or nothing: no history row, no webhook message for a conflict."""
    fresh, stale = store.insert(row(), actor="t"), store.insert(row(version=7), actor="t")
    outcome = store.transition_many(
        [died(fresh, outbox=[("http://hook/a", {"a": 1})]),
         died(stale, expected_version=6, outbox=[("http://hook/b", {"b": 1})])],
        actor="daemon", at=T1)
    assert outcome.conflicts == (stale.id,)
    assert [m.url for m in store.outbox(fresh.id)] == ["http://hook/a"]
    assert store.outbox(stale.id) == [] and len(store.history(stale.id)) == 1


def test_versions_returned_are_the_next_ones_to_expect(store: SqlInstanceStore) -> None:
    rec = store.insert(row(), actor="t")
    first = store.transition_many([died(rec)], actor="d", at=T1)
    assert first.applied == {rec.id: 4}
    back = Move(rec.id, first.applied[rec.id], S.FAILED, S.STARTING, E.RESTART,
                EdgeKind.COMMAND)
    assert store.transition_many([back], actor="d", at=T1).applied == {rec.id: 5}
    assert store.transition_many([back], actor="d", at=T1) == BatchOutcome({}, (rec.id,))
    with pytest.raises(VersionConflict):  # the single call agrees
        single(store, back, actor="d", at=T1)


@pytest.mark.parametrize(("bad", "says"), [("duplicate", "at most one write"),
                                           ("field", "not a mutable"), ("naive", "naive")])
def test_bad_input_is_refused_before_anything_is_written(store: SqlInstanceStore,
                                                         bad: str, says: str) -> None:
    a, b = store.insert(row(), actor="t"), store.insert(row(), actor="t")
    moves, at = [died(a), died(b)], T1
    if bad == "duplicate":
        moves.append(died(a))
    elif bad == "field":
        moves[1] = died(b, changes={"state": "RUNNING"})
    else:
        at = T1.replace(tzinfo=None)
    with pytest.raises(ValueError, match=says):
        store.transition_many(moves, actor="d", at=at)
    assert [store.get(r.id).version for r in (a, b)] == [3, 3]


def test_an_empty_batch_is_a_no_op(store: SqlInstanceStore) -> None:
    assert store.transition_many([], actor="d", at=T1) == BatchOutcome({})


def test_a_database_error_writes_nothing(store: SqlInstanceStore) -> None:
    a, b = store.insert(row(), actor="t"), store.insert(row(), actor="t")
    with pytest.raises(StoreError, match="constraint"):  # billable is NOT NULL
        store.transition_many([died(a), died(b, changes={"billable": None})],
                              actor="d", at=T1)
    assert [store.get(r.id).state for r in (a, b)] == [S.RUNNING, S.RUNNING]
    assert [len(store.history(r.id)) for r in (a, b)] == [1, 1]


def test_a_writer_slipping_in_mid_batch_makes_it_run_again(
        store: SqlInstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite reads before it takes the write lock: a row moved in between is a conflict."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL locks the rows it read: nobody can slip in")
    a, b = store.insert(row(), actor="t"), store.insert(row(), actor="t")
    real = store._positions
    calls = []

    def read_then_race(conn: object, ids: list[str]) -> dict[str, tuple[int, str]]:
        seen = real(conn, ids)  # type: ignore[arg-type]
        calls.append(len(ids))
        if len(calls) == 1:
            other = SqlInstanceStore(store.engine.url.render_as_string(hide_password=False))
            try:
                single(other, died(b), actor="racer", at=T0)
            finally:
                other.close()
        return seen

    monkeypatch.setattr(store, "_positions", read_then_race)
    outcome = store.transition_many([died(a), died(b)], actor="d", at=T1)
    assert calls == [2, 2]
    assert outcome == BatchOutcome({a.id: 4}, (b.id,))
    assert [h.actor for h in store.history(b.id)] == ["t", "racer"]


def test_overlapping_batches_move_each_row_once(store_url: str) -> None:
    """Two writers batching the same rows in opposite orders: no deadlock, no double."""
    stores = [SqlInstanceStore(store_url, migrate=True) for _ in range(2)]
    try:
        rows = [stores[0].insert(row(), actor="t") for _ in range(40)]
        outcomes: list[BatchOutcome] = []
        barrier = threading.Barrier(2)

        def run(store: SqlInstanceStore, order: list[InstanceRecord]) -> None:
            barrier.wait()
            outcomes.append(store.transition_many([died(r) for r in order], actor="d",
                                                  at=T1))

        threads = [threading.Thread(target=run, args=(stores[0], rows)),
                   threading.Thread(target=run, args=(stores[1], rows[::-1]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(outcomes) == 2
        applied = [set(o.applied) for o in outcomes]
        assert applied[0] | applied[1] == {r.id for r in rows}
        assert not applied[0] & applied[1]
        assert all(len(stores[0].history(r.id)) == 2 for r in rows)
    finally:
        for s in stores:
            s.close()


# -- reads -----------------------------------------------------------------------------


def test_list_returns_exactly_what_get_returns(store: SqlInstanceStore) -> None:
    """The positional reader against every kind of value a column can hold."""
    full = row(health={"verdict": "passed", "results": [{"ok": True}]}, last_error="x" * 300,
               price_per_hour=None, created_at=T0 + timedelta(microseconds=1))
    bare = row(state=S.CREATING, version=1, name=None, provider_instance_id=None, ip=None,
               region=None, instance_type=None, last_raw_status=None, last_seen_at=None,
               previous_state=None, entered_by=E.LAUNCH, billable=False,
               created_at=T0 + timedelta(seconds=1))
    for rec in (full, bare):
        store.insert(rec, actor="t")
    listed = store.list()
    assert listed == [store.get(full.id), store.get(bare.id)] == [full, bare]
    assert all(r.created_at.tzinfo is UTC for r in listed)
    assert isinstance(listed[1].state, InstanceState) and listed[1].billable is False


def test_list_tracked_is_the_slim_view_of_list(store: SqlInstanceStore) -> None:
    recs = [row(provider=p, state=s, created_at=T0 + timedelta(seconds=i),
                previous_state=None if i == 0 else S.STARTING,
                last_raw_status=None if i == 1 else "running")
            for i, (p, s) in enumerate([("sim", S.RUNNING), ("sim", S.STARTING),
                                        ("other", S.RUNNING), ("sim", S.TERMINATED)])]
    for rec in recs:
        store.insert(rec, actor="t")
    for kwargs in ({}, {"provider": "sim"}, {"states": [S.RUNNING]},
                   {"provider": "sim", "states": [S.RUNNING, S.STARTING]}, {"states": []}):
        tracked = store.list_tracked(**kwargs)  # type: ignore[arg-type]
        assert tracked == [TrackedInstance.of(r) for r in store.list(**kwargs)], kwargs  # type: ignore[arg-type]
    got = store.list_tracked()[0]
    assert got.state is S.RUNNING and got.entered_by is E.OBSERVED_RUNNING
    assert got.created_at.tzinfo is UTC and got.previous_state is None
    assert len(store.list_tracked(states=[S.TERMINATED])) == 1


def test_find_tracked_matches_tags_and_provider_ids(store: SqlInstanceStore) -> None:
    a, b, c = (store.insert(row(created_at=T0 + timedelta(seconds=i)), actor="t")
               for i in range(3))
    store.insert(row(provider="other", tag=a.tag), actor="t")  # same tag, other provider
    found = store.find_tracked("sim", tags=[a.tag, "gpufsm-nobody"],
                               provider_instance_ids=[c.provider_instance_id or "", "x"])
    assert [r.id for r in found] == [a.id, c.id]
    both = store.find_tracked("sim", tags=[b.tag], provider_instance_ids=[b.provider_instance_id
                                                                          or ""])
    assert both == [TrackedInstance.of(b)]
    assert store.find_tracked("sim") == []


def test_many_ids_are_read_in_chunks(store: SqlInstanceStore,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_columns, "ID_CHUNK", 2)
    recs = [store.insert(row(created_at=T0 + timedelta(seconds=i)), actor="t")
            for i in range(5)]
    assert [r.id for r in store.find_tracked("sim", tags=[r.tag for r in recs])] == [
        r.id for r in recs]
    outcome = store.transition_many([died(r) for r in recs], actor="d", at=T1)
    assert sorted(outcome.applied) == sorted(r.id for r in recs)


def test_the_collector_is_paused_only_while_a_list_is_built(
        store: SqlInstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.insert(row(), actor="t")
    seen: list[bool] = []
    reader = _columns.tracked_reader

    def spy(sqlite: bool) -> object:
        read = reader(sqlite)
        return lambda v: (seen.append(gc.isenabled()), read(v))[1]

    monkeypatch.setattr(_columns, "tracked_reader", spy)
    assert gc.isenabled()
    store.list_tracked()
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        store.list_tracked()
        assert not gc.isenabled()  # someone else's choice is kept
    finally:
        gc.enable()


def test_the_list_order_has_an_index(store: SqlInstanceStore) -> None:
    indexes = {ix["name"]: ix["column_names"]
               for ix in inspect(store.engine).get_indexes("gpufsm_instances")}
    assert indexes["ix_instances_created"] == ["created_at", "id"]


# -- history_many: history of many rows in one read ---------------------------------------


def test_history_many_is_history_for_each_row(store: SqlInstanceStore) -> None:
    recs = [store.insert(row(), actor="t") for _ in range(3)]
    store.transition_many([died(recs[0]), died(recs[2])], actor="rec", at=T1)
    asked = [r.id for r in recs] + ["no-such-row"]
    many = store.history_many(asked)
    assert sorted(many) == sorted(asked)
    for r in recs:
        assert list(many[r.id]) == list(store.history(r.id))
    assert [h.event for h in many[recs[0].id]] == [E.LAUNCH, E.OBSERVED_FAILED]
    assert many["no-such-row"] == []


def test_history_many_reads_in_chunks(store: SqlInstanceStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_columns, "ID_CHUNK", 2)
    recs = [store.insert(row(), actor="t") for _ in range(5)]
    many = store.history_many(r.id for r in recs)
    assert all(len(many[r.id]) == 1 for r in recs)
    assert store.history_many([]) == {}


# -- get_many: full records of many rows in one read ----------------------------------------


def test_get_many_is_get_for_each_row(store: SqlInstanceStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_columns, "ID_CHUNK", 2)  # and it reads in chunks
    recs = [store.insert(row(), actor="t") for _ in range(5)]
    store.transition_many([died(recs[1])], actor="rec", at=T1)
    many = store.get_many([r.id for r in recs] + ["no-such-row"])
    assert sorted(many) == sorted(r.id for r in recs)
    assert all(many[r.id] == store.get(r.id) for r in recs)
    assert many[recs[1].id].state is not recs[1].state  # read now, not remembered
    assert store.get_many([]) == {}
