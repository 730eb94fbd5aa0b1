"""Price points (migration 0009): a row's first price counts from its creation, a
change from when it was seen, and a write that repeats the price records nothing. Every
write path records them: insert, transition, a batch of decisions, a facts update.
Over every store backend."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from gpufsm.machines import EdgeKind, Event, InstanceState
from gpufsm.store import Move, PricePoint, RowWrite, SqlInstanceStore, upgrade
from test_store_contract import T0, new_record

S = InstanceState
H = timedelta(hours=1)


def test_the_first_price_counts_from_creation_and_a_change_from_when_seen(
        store: SqlInstanceStore) -> None:
    rec = store.insert(new_record(), actor="t")  # no price yet: nothing recorded
    assert store.price_points([rec.id]) == {rec.id: []}
    rec = store.update(rec.id, expected_version=1, at=T0 + H, changes={"price_per_hour": 0.5})
    rec = store.update(rec.id, expected_version=1, at=T0 + 2 * H,
                       changes={"price_per_hour": 0.5, "ip": "10.0.0.1"})  # the same price
    outcome = store.apply_batch([RowWrite(rec.id, 1, S.CREATING, facts={
        "price_per_hour": 0.8})], actor="t", at=T0 + 3 * H)
    assert outcome.conflicts == ()
    store.transition(Move(rec.id, 1, S.CREATING, S.CREATED, Event.OBSERVED_CREATED,
                          EdgeKind.OBSERVATION, changes={"price_per_hour": 1.25}),
                     actor="t", at=T0 + 4 * H)
    assert store.price_points([rec.id]) == {rec.id: [
        PricePoint(T0, 0.5), PricePoint(T0 + 3 * H, 0.8), PricePoint(T0 + 4 * H, 1.25)]}


def test_an_inserted_price_is_a_point_and_a_stale_batch_row_records_none(
        store: SqlInstanceStore) -> None:
    priced = store.insert(new_record(price_per_hour=2.0), actor="t")
    other = store.insert(new_record(price_per_hour=1.0), actor="t")
    outcome = store.apply_batch([
        RowWrite(priced.id, 7, S.CREATING, facts={"price_per_hour": 3.0}),  # stale
        RowWrite(other.id, 1, S.CREATING, facts={"price_per_hour": 1.0}),  # unchanged
    ], actor="t", at=T0 + H)
    assert outcome.conflicts == (priced.id,)
    assert store.price_points([priced.id, other.id, "no-such-row"]) == {
        priced.id: [PricePoint(T0, 2.0)], other.id: [PricePoint(T0, 1.0)], "no-such-row": []}


def test_the_migration_gives_each_priced_row_its_price_from_creation(
        store: SqlInstanceStore) -> None:
    """Rows written before 0009 keep the figure the ledger gave them: one point, their
    last price, from their creation."""
    from alembic import command

    from gpufsm.store._migrate import _config

    priced = store.insert(new_record(price_per_hour=0.75), actor="t")
    store.update(priced.id, expected_version=1, at=T0 + H, changes={"price_per_hour": 0.9})
    unpriced = store.insert(new_record(), actor="t")
    config = _config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    with store.engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema()" if store.engine.dialect.name == "postgresql"
            else "SELECT name FROM sqlite_master WHERE type = 'table'"))}
    assert "gpufsm_prices" not in tables
    assert upgrade(store.engine) == "0009"
    assert store.price_points([priced.id, unpriced.id]) == {
        priced.id: [PricePoint(T0, 0.9)], unpriced.id: []}
