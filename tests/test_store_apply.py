"""``apply_batch``: whole decisions (moves, drift, facts) of many rows in one transaction.

Runs on SQLite and, when GPUFSM_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.reconcile._listing import WATCHED as _WATCHED
from gpufsm.reconcile._listing import needs_watching as _needs_watching
from gpufsm.store import (
    DriftNote,
    InstanceRecord,
    Move,
    RowWrite,
    SqlInstanceStore,
    TrackedInstance,
    _columns,
)

S = InstanceState
E = Event
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def creating(**overrides: object) -> InstanceRecord:
    token = uuid.uuid4().hex[:16]
    values: dict[str, Any] = dict(
        id=str(uuid.uuid4()), provider="sim", state=S.CREATING, version=1,
        client_token=token, tag=f"gpufsm-{token}", name="job", billable=True,
        spec={"provider": "sim"}, created_at=T0, updated_at=T0, state_entered_at=T0)
    values.update(overrides)
    return InstanceRecord(**values)


def found_running(rec: InstanceRecord) -> tuple[Move, Move]:
    """A CREATING row found running: observed_created, then observed_running."""
    created = Move(rec.id, rec.version, S.CREATING, S.CREATED, E.OBSERVED_CREATED,
                   EdgeKind.OBSERVATION, raw_status="active",
                   changes={"provider_instance_id": f"p-{rec.tag}", "accepted_at": T1})
    running = Move(rec.id, rec.version + 1, S.CREATED, S.RUNNING, E.OBSERVED_RUNNING,
                   EdgeKind.OBSERVATION, raw_status="active",
                   outbox=[("http://hook/1", {"n": 1})])
    return created, running


def story(store: SqlInstanceStore, instance_id: str) -> tuple[Any, ...]:
    rec = store.get(instance_id)
    return (
        dataclasses.replace(rec, id="", client_token="", tag="", provider_instance_id=None),
        [(h.from_state, h.to_state, h.event, h.version, h.actor, h.at, h.raw_status)
         for h in store.history(instance_id)],
        [(d.state, d.event, d.raw_status, d.reason, d.actor) for d in store.drift(instance_id)],
        [(m.url, m.payload) for m in store.outbox(instance_id)],
    )


def test_a_whole_decision_writes_what_its_single_writes_write(
        store: SqlInstanceStore) -> None:
    """Two chained moves, a drift and facts in one batch: the same row, history, drift
    and outbox as one transition call each, then record_drift, then update."""
    one, other = store.insert(creating(), actor="t"), store.insert(creating(), actor="t")
    facts = {"ip": "127.0.0.5", "last_seen_at": T1}
    drift = DriftNote(E.OBSERVED_STOPPED, "stopped", "seen stopped while running")
    for move in found_running(one):
        store.transition(move, actor="d", at=T1)
    store.record_drift(one.id, state=S.RUNNING, event=drift.event, actor="d", at=T1,
                       raw_status=drift.raw_status, reason=drift.reason)
    store.update(one.id, expected_version=3, at=T1, changes=facts)

    outcome = store.apply_batch([RowWrite(other.id, 1, S.CREATING, found_running(other),
                                          drift, facts)], actor="d", at=T1)
    assert outcome.applied == {other.id: 3} and outcome.conflicts == ()
    assert story(store, other.id) == story(store, one.id)


def test_a_stale_row_writes_none_of_its_parts_and_the_rest_commit(
        store: SqlInstanceStore) -> None:
    stale, fine = store.insert(creating(), actor="t"), store.insert(creating(), actor="t")
    before = story(store, stale.id)
    store.update(stale.id, expected_version=1, at=T0, changes={"ip": "127.0.0.1"})
    store.transition(found_running(stale)[0], actor="other", at=T0)  # moved on: version 2
    before = story(store, stale.id)
    writes = [RowWrite(r.id, 1, S.CREATING, found_running(r), DriftNote(E.OBSERVED_GONE),
                       {"ip": "127.0.0.9"}) for r in (stale, fine)]
    outcome = store.apply_batch(writes, actor="d", at=T1)
    assert outcome.applied == {fine.id: 3} and outcome.conflicts == (stale.id,)
    assert story(store, stale.id) == before
    assert store.get(fine.id).ip == "127.0.0.9"


def test_facts_alone_check_the_version_and_do_not_bump_it(store: SqlInstanceStore) -> None:
    rec = store.insert(creating(), actor="t")
    outcome = store.apply_batch([RowWrite(rec.id, 1, S.CREATING, facts={"ip": "10.0.0.1"})],
                                actor="d", at=T1)
    assert outcome.applied == {rec.id: 1}
    after = store.get(rec.id)
    assert (after.ip, after.version, after.updated_at) == ("10.0.0.1", 1, T1)
    stale = store.apply_batch([RowWrite(rec.id, 7, S.CREATING, facts={"ip": "10.0.0.2"})],
                              actor="d", at=T1)
    assert stale.conflicts == (rec.id,) and store.get(rec.id).ip == "10.0.0.1"


def test_a_drift_alone_is_recorded_in_the_rows_state(store: SqlInstanceStore) -> None:
    rec = store.insert(creating(), actor="t")
    store.apply_batch([RowWrite(rec.id, 1, S.CREATING, drift=DriftNote(E.OBSERVED_STOPPED))],
                      actor="d", at=T1)
    assert [(d.state, d.event, d.actor, d.at) for d in store.drift(rec.id)] == [
        (S.CREATING, E.OBSERVED_STOPPED, "d", T1)]


@pytest.mark.parametrize("broken", ["version", "state", "row"])
def test_moves_that_do_not_follow_each_other_are_refused(
        store: SqlInstanceStore, broken: str) -> None:
    rec = store.insert(creating(), actor="t")
    created, running = found_running(rec)
    bad = {"version": dataclasses.replace(running, expected_version=7),
           "state": dataclasses.replace(running, from_state=S.STOPPED),
           "row": dataclasses.replace(running, instance_id="someone-else")}[broken]
    with pytest.raises(ValueError, match="do not follow each other"):
        store.apply_batch([RowWrite(rec.id, 1, S.CREATING, (created, bad))],
                          actor="d", at=T1)
    assert store.get(rec.id).version == 1 and len(store.history(rec.id)) == 1


def test_the_record_readers_stamps_are_the_records_datetime_fields() -> None:
    """A datetime field missing from the reader's list would come back as text."""
    stamps = {f.name for f in dataclasses.fields(InstanceRecord) if "datetime" in str(f.type)}
    assert set(_columns._STAMPS) == stamps


_ROWS = st.lists(st.tuples(st.sampled_from(list(S)), st.booleans(), st.booleans()),
                 min_size=1, max_size=12)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS)
def test_a_claim_takes_exactly_the_rows_a_pass_watches(
        store: SqlInstanceStore, rows: list[tuple[S, bool, bool]]) -> None:
    """The store's ``watched`` query and the pass's ``_needs_watching`` never disagree:
    a row one of them skips and the other watches would go unleased or unlooked-at."""
    owner = uuid.uuid4().hex
    inserted = [store.insert(creating(state=state, billable=billable,
                                      provider_instance_id=f"p-{uuid.uuid4().hex}" if pid
                                      else None), actor="t")
                for state, billable, pid in rows]
    claimed = {r.id for r in store.claim(owner, now=T0, ttl=60)}
    mine = {r.id for r in inserted}
    watched = {r.id for r in inserted
               if r.state in _WATCHED and _needs_watching(TrackedInstance.of(r))}
    assert claimed & mine == watched


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01 00:00:00", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01 00:00:00.123456", datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ("2026-01-01 00:00:00.123", datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
    ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
])
def test_sqlite_stamps_come_back_aware_and_in_utc(text: str, expected: datetime) -> None:
    stamp = _columns._sqlite_stamp(text)
    assert stamp == expected and stamp is not None and stamp.utcoffset() == timedelta(0)
