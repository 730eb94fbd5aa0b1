"""One contract for every InstanceStore backend (SQLite and, in CI, PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gpufsm.errors import InstanceNotFound, StoreError, VersionConflict
from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store import (
    InstanceRecord,
    InstanceStore,
    Move,
    SqlInstanceStore,
    TrackedInstance,
    current_revision,
    head_revision,
    make_engine,
)

S = InstanceState
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def new_record(**overrides: object) -> InstanceRecord:
    token = uuid.uuid4().hex[:16]
    values: dict[str, object] = dict(
        id=str(uuid.uuid4()), provider="sim", state=S.CREATING, version=1,
        client_token=token, tag=f"gpufsm-{token}", name="job", billable=True,
        spec={"provider": "sim", "instance_type": "gpu_1x_a10", "env": {"A": "1"}},
        created_at=T0, updated_at=T0, state_entered_at=T0, instance_type="gpu_1x_a10",
    )
    values.update(overrides)
    return InstanceRecord(**values)  # type: ignore[arg-type]


def move(store: InstanceStore, rec: InstanceRecord, to: S, event: Event, *,
         at: datetime = T0, **changes: object) -> InstanceRecord:
    return store.transition(Move(rec.id, rec.version, rec.state, to, event,
                                 EdgeKind.OBSERVATION, raw_status="raw", changes=changes),
                            actor="t", at=at)


def test_is_an_instance_store(store: SqlInstanceStore) -> None:
    assert isinstance(store, InstanceStore)


def test_insert_then_get_round_trips_every_field(store: SqlInstanceStore) -> None:
    rec = new_record(region="us-east-1", price_per_hour=0.75)
    store.insert(rec, actor="tester", reason="because")
    assert store.get(rec.id) == rec
    (h,) = store.history(rec.id)
    assert (h.from_state, h.to_state, h.event, h.kind, h.version, h.actor, h.reason) == (
        None, S.CREATING, Event.LAUNCH, EdgeKind.COMMAND, 1, "tester", "because")
    assert h.at == T0 and h.at.tzinfo is not None


def test_transition_bumps_version_and_appends_history(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    later = T0 + timedelta(seconds=5)
    rec2 = move(store, rec, S.CREATED, Event.OBSERVED_CREATED, at=later,
                provider_instance_id="p-1")
    assert (rec2.state, rec2.version, rec2.provider_instance_id) == (S.CREATED, 2, "p-1")
    assert rec2.previous_state is S.CREATING and rec2.entered_by is Event.OBSERVED_CREATED
    assert rec2.state_entered_at == later and rec2.last_raw_status == "raw"
    assert store.get(rec.id) == rec2
    assert [h.version for h in store.history(rec.id)] == [1, 2]


def test_stale_version_conflicts_and_writes_nothing(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    move(store, rec, S.CREATED, Event.OBSERVED_CREATED)
    with pytest.raises(VersionConflict) as info:
        move(store, rec, S.FAILED, Event.LAUNCH_FAILED)
    assert info.value.expected_version == 1
    assert store.get(rec.id).state is S.CREATED
    assert len(store.history(rec.id)) == 2


def test_unknown_id_is_instance_not_found(store: SqlInstanceStore) -> None:
    with pytest.raises(InstanceNotFound):
        store.get("nope")
    ghost = new_record()
    with pytest.raises(InstanceNotFound):
        move(store, ghost, S.CREATED, Event.OBSERVED_CREATED)
    with pytest.raises(InstanceNotFound):
        store.update("nope", expected_version=1, at=T0, changes={"ip": "1.2.3.4"})


def test_update_changes_facts_without_a_transition(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    updated = store.update(rec.id, expected_version=1, at=T0 + timedelta(seconds=1),
                           changes={"ip": "10.0.0.9", "last_error": "boom"})
    assert (updated.ip, updated.last_error, updated.version) == ("10.0.0.9", "boom", 1)
    assert len(store.history(rec.id)) == 1
    with pytest.raises(VersionConflict):
        store.update(rec.id, expected_version=7, at=T0, changes={"ip": "x"})


def test_only_known_fields_may_change(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    with pytest.raises(ValueError, match="not a mutable instance field"):
        store.update(rec.id, expected_version=1, at=T0, changes={"state": "RUNNING"})


def test_naive_datetimes_are_refused(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    with pytest.raises(ValueError, match="naive datetime"):
        move(store, rec, S.CREATED, Event.OBSERVED_CREATED, at=datetime(2026, 1, 1))
    assert store.get(rec.id).version == 1


def test_duplicate_client_token_is_a_store_error(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    with pytest.raises(StoreError, match="constraint"):
        store.insert(new_record(client_token=rec.client_token), actor="t")


def test_find_by_provider_id_or_tag(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    move(store, rec, S.CREATED, Event.OBSERVED_CREATED, provider_instance_id="p-9")
    assert store.find("sim", provider_instance_id="p-9").id == rec.id  # type: ignore[union-attr]
    assert store.find("sim", tag=rec.tag).id == rec.id  # type: ignore[union-attr]
    assert store.find("other", tag=rec.tag) is None
    with pytest.raises(ValueError, match="exactly one"):
        store.find("sim")


def test_list_filters_by_provider_and_state(store: SqlInstanceStore) -> None:
    a = store.insert(new_record(), actor="t")
    b = store.insert(new_record(provider="lambda", created_at=T0 + timedelta(seconds=1)),
                     actor="t")
    move(store, a, S.CREATED, Event.OBSERVED_CREATED)
    assert [r.id for r in store.list()] == [a.id, b.id]
    assert [r.id for r in store.list(provider="lambda")] == [b.id]
    assert [r.id for r in store.list(states=[S.CREATED])] == [a.id]
    assert store.list(states=[]) == []


def test_drift_is_recorded_apart_from_history(store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")
    store.record_drift(rec.id, state=S.CREATING, event=Event.OBSERVED_STOPPED, actor="r",
                       at=T0, raw_status="exited", reason="odd")
    (d,) = store.drift(rec.id)
    assert (d.state, d.event, d.raw_status, d.reason) == (
        S.CREATING, Event.OBSERVED_STOPPED, "exited", "odd")
    assert len(store.history(rec.id)) == 1


def test_concurrent_writers_one_wins(store_url: str) -> None:
    """Eight threads race the same transition from one version: exactly one commits."""
    stores = [SqlInstanceStore(store_url, migrate=True) for _ in range(2)]
    try:
        rec = stores[0].insert(new_record(), actor="t")
        wins: list[int] = []
        conflicts: list[int] = []
        barrier = threading.Barrier(8)

        def race(n: int) -> None:
            barrier.wait()
            try:
                move(stores[n % 2], rec, S.CREATED, Event.OBSERVED_CREATED,
                     provider_instance_id=f"p-{n}")
                wins.append(n)
            except VersionConflict:
                conflicts.append(n)

        threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(conflicts) == 7
        final = stores[1].get(rec.id)
        assert final.version == 2 and final.provider_instance_id == f"p-{wins[0]}"
        assert len(stores[1].history(rec.id)) == 2
    finally:
        for s in stores:
            s.close()


def test_migrations_are_idempotent_and_at_head(store: SqlInstanceStore, store_url: str) -> None:
    assert current_revision(store.engine) == head_revision()
    again = SqlInstanceStore(store_url, migrate=True)
    try:
        assert current_revision(again.engine) == head_revision()
    finally:
        again.close()


def test_the_models_match_the_migrations(store: SqlInstanceStore) -> None:
    """The tables the code reads (``_models``) are the tables the migrations made: a
    column or index added to one and not the other is caught here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from gpufsm.store._models import Base

    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": "gpufsm_alembic_version"})
        assert compare_metadata(context, Base.metadata) == []


def test_unmigrated_database_is_refused_unless_asked(store_url: str) -> None:
    with pytest.raises(StoreError, match="gpufsm db upgrade"):
        SqlInstanceStore(store_url, migrate=False)


def test_sqlite_uses_wal_and_full_sync(tmp_path: object) -> None:
    from pathlib import Path

    from sqlalchemy import text

    url = f"sqlite:///{Path(str(tmp_path)) / 'nested' / 'dir' / 'g.db'}"
    s = SqlInstanceStore(url)  # creates the folder and migrates automatically
    try:
        with s.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        s.close()
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        make_engine(url, sqlite_synchronous="SOMETIMES")


def test_repr_hides_the_password() -> None:
    s = SqlInstanceStore.__new__(SqlInstanceStore)
    s.engine = make_engine("postgresql+psycopg://user:hunter2@127.0.0.1:1/x")
    try:
        assert "hunter2" not in repr(s)
    finally:
        s.engine.dispose()


def test_leases_split_rows_and_expire(store: SqlInstanceStore) -> None:
    a = store.insert(new_record(), actor="t")
    b = store.insert(new_record(), actor="t")
    got = store.claim("d1", now=T0, ttl=60)
    assert {r.id for r in got} == {a.id, b.id}
    assert all(isinstance(r, TrackedInstance) for r in got)
    assert store.claim("d2", now=T0 + timedelta(seconds=30), ttl=60) == []
    (renewed,) = store.claim("d1", now=T0 + timedelta(seconds=30), ttl=60, limit=1)
    (other,) = {a.id, b.id} - {renewed.id}
    # d1 died: the other lease ran out at T0+60, the renewed one holds until T0+90
    taken = store.claim("d2", now=T0 + timedelta(seconds=61), ttl=60)
    assert [r.id for r in taken] == [other]
    assert store.release("d1") == 1
    again = store.claim("d2", now=T0 + timedelta(seconds=62), ttl=60, limit=1)
    assert [r.id for r in again] == [other]  # its own lease first
    assert store.release("d2", [other, "no-such-row"]) == 1


def test_a_claim_takes_only_the_rows_a_reconciler_watches(store: SqlInstanceStore) -> None:
    """TERMINATED rows, and FAILED rows that never reached the provider, are not leased."""
    live = store.insert(new_record(), actor="t")
    store.insert(new_record(state=S.TERMINATED, billable=False), actor="t")
    store.insert(new_record(state=S.FAILED, billable=False, provider_instance_id=None),
                 actor="t")
    billing_failure = store.insert(new_record(state=S.FAILED, billable=True), actor="t")
    got = store.claim("d1", now=T0, ttl=60)
    assert sorted(r.id for r in got) == sorted([live.id, billing_failure.id])


def test_a_claim_of_a_large_fleet_is_one_statement(store: SqlInstanceStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are picked by query: no list of ids to outgrow SQLite's parameter limit."""
    from gpufsm.store import _columns
    monkeypatch.setattr(_columns, "ID_CHUNK", 2)
    ids = {store.insert(new_record(), actor="t").id for _ in range(5)}
    assert {r.id for r in store.claim("d1", now=T0, ttl=60)} == ids
    assert store.release("d1", sorted(ids)) == 5  # released in chunks of two


def test_concurrent_claims_never_overlap(store_url: str) -> None:
    """Daemons claiming at the same moment split the rows (SKIP LOCKED on PostgreSQL)."""
    stores = [SqlInstanceStore(store_url, migrate=True) for _ in range(3)]
    try:
        ids = [stores[0].insert(new_record(), actor="t").id for _ in range(60)]
        claimed: dict[str, list[str]] = {}
        barrier = threading.Barrier(3)

        def daemon(n: int) -> None:
            barrier.wait()
            rows = stores[n].claim(f"d{n}", now=T0, ttl=60)
            claimed[f"d{n}"] = [r.id for r in rows]

        threads = [threading.Thread(target=daemon, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = [i for got in claimed.values() for i in got]
        assert sorted(everything) == sorted(ids)  # every row claimed exactly once
    finally:
        for s in stores:
            s.close()


def test_sqlite_allows_one_daemon_and_says_so(tmp_path: object) -> None:
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'one.db'}"
    first, second = SqlInstanceStore(url), SqlInstanceStore(url)
    try:
        refused = pytest.raises(StoreError, match=r"already reconciling .* SQLite supports one")
        with first.daemon_lock(), refused, second.daemon_lock():
            pass
        with second.daemon_lock():  # released: the next one may start
            pass
    finally:
        first.close()
        second.close()
