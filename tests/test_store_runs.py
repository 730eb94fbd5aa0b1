"""A recovering run's rows in the store: linked by run id, read back in generation order,
found by an id prefix. SQLite and, when GPUFSM_TEST_POSTGRES is set, PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

from gpufsm.store import SqlInstanceStore
from test_store_contract import T0, new_record


def test_generations_come_back_in_order_with_their_links(store: SqlInstanceStore) -> None:
    run = str(uuid.uuid4())
    # inserted out of order: generation 2's two attempts, then generation 1
    second_a = new_record(run_id=run, generation=2, placement_id="p2",
                          created_at=T0 + timedelta(minutes=5))
    second_b = new_record(run_id=run, generation=2, placement_id="p2",
                          created_at=T0 + timedelta(minutes=6))
    first = new_record(run_id=run, generation=1)
    other = new_record(run_id=str(uuid.uuid4()), generation=1)
    for rec in (second_b, second_a, first, other, new_record()):
        store.insert(rec, actor="t")
    rows = store.generations(run)
    assert [r.id for r in rows] == [first.id, second_a.id, second_b.id]
    assert [(r.run_id, r.generation) for r in rows] == [(run, 1), (run, 2), (run, 2)]
    assert store.get(first.id) == first  # the link round-trips with every other field
    assert store.generations(str(uuid.uuid4())) == []


def test_a_run_is_found_by_a_unique_prefix_only(store: SqlInstanceStore) -> None:
    run = "abcd1234-0000-4000-8000-" + uuid.uuid4().hex[:12]
    twin = "abcd1234-ffff-4000-8000-" + uuid.uuid4().hex[:12]
    store.insert(new_record(run_id=run, generation=1), actor="t")
    store.insert(new_record(run_id=run, generation=2), actor="t")
    assert store.find_run(run[:13]) == run  # two rows, one run
    store.insert(new_record(run_id=twin, generation=1), actor="t")
    assert store.find_run(run[:13]) == run
    assert store.find_run("abcd1234") is None  # ambiguous
    assert store.find_run("%") is None and store.find_run("") is None  # no wildcards
    assert store.find_run(twin) == twin
