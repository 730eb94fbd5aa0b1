"""Batched observation: observe_many/observe_batched decide exactly as observe does (the
same ``decide``), commit the moves of the batch together, and leave to observe only rows
they could not write (held by another thread, moved meanwhile, a failed write); the
reconcile pass syncs through them and reads its orphans in one go.

Over every store backend (SQLite, and PostgreSQL when GPUFSM_TEST_POSTGRES is set).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from gpufsm import EdgeKind, Fleet, InstanceState, StoreError
from gpufsm.adapters import Observation, ProviderInstance
from gpufsm.machines import Event
from gpufsm.notify import TransitionEvent, Webhook
from gpufsm.reconcile import Reconciler
from gpufsm.store import InstanceRecord, Move, SqlInstanceStore, TrackedInstance
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState
E = Event
HOOK = "http://127.0.0.1:1/all"


@dataclass(frozen=True)
class Case:
    """One row and what the provider says about it; ``raw=None`` is not PRESENT."""

    name: str
    state: S
    seen: str | None  # raw status, or "absent!", "absent?", "unknown"
    seen_state: S | None = None
    row: dict[str, Any] | None = None  # fields of the row beyond the defaults
    ip: str | None = "127.0.0.9"
    detail: str | None = None


CASES = [
    Case("quiet", S.RUNNING, "running", S.RUNNING),
    Case("new ip", S.RUNNING, "running", S.RUNNING, ip="127.0.0.10"),
    Case("booted", S.STARTING, "running", S.RUNNING, row={"last_raw_status": "booting"}),
    Case("gated, no address yet", S.STARTING, "running", S.RUNNING, ip=None,
         row={"last_raw_status": "booting",
              "spec": {"provider": "sim", "health": {"tcp_ports": [22], "deadline": 600}}}),
    Case("died", S.RUNNING, "unhealthy", S.FAILED, detail="GPU fell off the bus"),
    Case("gone, confirmed", S.RUNNING, "absent!"),
    Case("gone, unconfirmed", S.RUNNING, "absent?"),
    Case("listing unknown", S.RUNNING, "unknown"),
    Case("unknown raw status", S.RUNNING, "zz-new", None),
    Case("drift", S.TERMINATING, "running", S.RUNNING, row={"last_raw_status": "terminating"}),
    Case("drift already on record", S.TERMINATING, "running", S.RUNNING,
         row={"last_raw_status": "running"}),
    Case("found while creating", S.CREATING, "running", S.RUNNING,
         row={"provider_instance_id": None, "previous_state": None, "entered_by": E.LAUNCH,
              "last_raw_status": None, "ip": None}),
    Case("stale after our stop", S.STOPPING, "running", S.RUNNING,
         row={"previous_state": S.RUNNING, "entered_by": E.STOP, "last_raw_status": "running"}),
    Case("stop seen", S.STOPPING, "stopped", S.STOPPED, ip=None,
         row={"previous_state": S.RUNNING, "entered_by": E.STOP, "last_raw_status": "stopping"}),
    Case("already terminated", S.TERMINATED, "running", S.RUNNING),
    Case("someone terminates it", S.FAILED, "terminating", S.TERMINATING,
         row={"last_raw_status": "unhealthy"}),
    Case("id found for a terminating row", S.TERMINATING, "terminating", S.TERMINATING,
         row={"provider_instance_id": None, "last_raw_status": None}),
]


@pytest.fixture
def heard() -> list[TransitionEvent]:
    return []


@pytest.fixture
def batch_fleet(store: SqlInstanceStore, cloud: SimulatedCloud, clock: FakeClock,
                heard: list[TransitionEvent]) -> Fleet:
    fleet = Fleet(store, [cloud], clock=clock, actor="test", webhooks=[Webhook(HOOK)])
    fleet.subscribe(heard.append)
    return fleet


def make_row(store: SqlInstanceStore, clock: FakeClock, case: Case) -> InstanceRecord:
    token = uuid.uuid4().hex[:16]
    at = clock.now() - timedelta(seconds=5)  # inside the 30 s command grace
    fields: dict[str, Any] = dict(
        id=str(uuid.uuid4()), provider="sim", state=case.state, version=4,
        client_token=token, tag=f"gpufsm-{token}", name=f"job-{token[:4]}", billable=True,
        spec={"provider": "sim", "instance_type": "gpu_1x_a10"}, created_at=at,
        updated_at=at, state_entered_at=at, provider_instance_id=f"sim-{token}",
        price_per_hour=0.75, ip="127.0.0.9", last_raw_status="running",
        previous_state=S.STARTING, entered_by=E.OBSERVED_RUNNING, last_seen_at=at)
    fields.update(case.row or {})
    return store.insert(InstanceRecord(**fields), actor="seed")


def observation(case: Case, rec: InstanceRecord) -> Observation:
    if case.seen == "absent!":
        return Observation.absent(confirmed=True, reason="provider: not found")
    if case.seen == "absent?":
        return Observation.absent(confirmed=False, reason="missing from one listing")
    if case.seen == "unknown" or case.seen is None:
        return Observation.unknown("listing failed")
    pid = rec.provider_instance_id or f"sim-{rec.client_token}"
    return Observation.present(ProviderInstance(
        provider_instance_id=pid, raw_status=case.seen, state=case.seen_state, tag=rec.tag,
        name=rec.name, ip=case.ip, price_per_hour=0.75, detail=case.detail))


def anonymous(rec: InstanceRecord) -> InstanceRecord:
    return replace(rec, id="", client_token="", tag="", name="", provider_instance_id=None)


def story(fleet: Fleet, instance_id: str) -> tuple[object, ...]:
    """Everything a path leaves behind for one instance, with its identity taken out."""
    store = fleet.store
    assert isinstance(store, SqlInstanceStore)
    return (
        anonymous(store.get(instance_id)),
        [(h.from_state, h.to_state, h.event, h.kind, h.actor, h.version, h.at, h.reason,
          h.raw_status) for h in store.history(instance_id)],
        [(d.state, d.event, d.actor, d.at, d.raw_status, d.reason)
         for d in store.drift(instance_id)],
        [(m.url, _strip(m.payload)) for m in store.outbox(instance_id)],
    )


def _canon(event: TransitionEvent) -> str:
    return json.dumps(_strip(event.payload()), sort_keys=True)


def _strip(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items()
            if k not in ("instance_id", "provider_instance_id", "name", "tag")}


@pytest.fixture
def spy_batches(store: SqlInstanceStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = store.apply_batch

    def spy(writes: Any, **kw: Any) -> Any:
        sizes.append(len(writes))
        return real(writes, **kw)

    monkeypatch.setattr(store, "apply_batch", spy)
    return sizes


# -- the same decisions as observe() ------------------------------------------------------


@pytest.mark.parametrize("view", ["tracked", "record"])
def test_every_case_ends_as_observe_would_leave_it(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock,
        heard: list[TransitionEvent], spy_batches: list[int], view: str) -> None:
    single = {c.name: make_row(store, clock, c) for c in CASES}
    batched = {c.name: make_row(store, clock, c) for c in CASES}
    story_before = {c.name: story(batch_fleet, batched[c.name].id) for c in CASES}
    for case in CASES:
        batch_fleet.observe(single[case.name].id, observation(case, single[case.name]))
    heard_single = [_canon(e) for e in heard]
    heard.clear()

    rows: dict[str, Any] = {r.id: r for r in store.list_tracked()} if view == "tracked" \
        else {r.id: r for r in store.list()}
    items = [(rows[batched[c.name].id], observation(c, batched[c.name])) for c in CASES]
    results = batch_fleet.observe_many(items)

    for case, result in zip(CASES, results, strict=True):
        a, b = single[case.name].id, batched[case.name].id
        assert story(batch_fleet, b) == story(batch_fleet, a), case.name
        current = store.get(b)
        expected = TrackedInstance.of(current) if view == "tracked" else current
        assert result == expected, case.name
    assert sorted(_canon(e) for e in heard) == sorted(heard_single)
    # every row's writes in one transaction: the moves (found while creating moves
    # twice), the drift, and the facts of rows that only report new ones
    wrote = [c.name for c in CASES if store.get(batched[c.name].id).updated_at
             != batched[c.name].updated_at
             or story(batch_fleet, batched[c.name].id) != story_before[c.name]]
    assert spy_batches == [len(wrote)]
    assert "found while creating" in wrote and "drift" in wrote and "new ip" in wrote


def test_every_case_is_done_in_the_batch(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock) -> None:
    """Drift, facts, the health gate and a second move need observe() no more."""
    rows = {c.name: make_row(store, clock, c) for c in CASES}
    tracked = {r.id: r for r in store.list_tracked()}
    done = batch_fleet.observe_batched(
        [(tracked[rows[c.name].id], observation(c, rows[c.name])) for c in CASES])
    assert [c.name for c, d in zip(CASES, done, strict=True) if d is None] == []


def test_slim_rows_that_need_their_record_are_read_together(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slim row cannot count a listing that misses it (no ``missing_since`` on it): the
    batch reads those records in one ``get_many``, never one ``get`` per row (N+1)."""
    case = Case("gone, unconfirmed", S.RUNNING, "absent?")
    rows = [make_row(store, clock, case) for _ in range(5)]
    tracked = {r.id: r for r in store.list_tracked()}
    gets: list[str] = []
    many: list[int] = []
    real_get, real_many = store.get, store.get_many
    monkeypatch.setattr(store, "get", lambda i: gets.append(i) or real_get(i))
    monkeypatch.setattr(store, "get_many",
                        lambda ids: many.append(len(ids := list(ids))) or real_many(ids))
    done = batch_fleet.observe_batched([(tracked[r.id], observation(case, r)) for r in rows])
    assert None not in done
    assert (gets, many) == ([], [5])
    monkeypatch.undo()
    assert all(store.get(r.id).missing_count == 1 for r in rows)


def test_listeners_hear_after_the_commit(batch_fleet: Fleet, store: SqlInstanceStore,
                                        clock: FakeClock) -> None:
    case = next(c for c in CASES if c.name == "died")
    rec = make_row(store, clock, case)
    states_when_heard: list[S] = []
    batch_fleet.subscribe(lambda e: states_when_heard.append(store.get(e.instance_id).state))
    batch_fleet.observe_many([(TrackedInstance.of(rec), observation(case, rec))])
    assert states_when_heard == [S.FAILED]


# -- what goes back to observe() ------------------------------------------------------


def test_a_row_that_moved_since_it_was_read_is_observed_afresh(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock,
        spy_batches: list[int]) -> None:
    case = next(c for c in CASES if c.name == "died")
    rec = make_row(store, clock, case)
    stale = TrackedInstance.of(rec)
    moved = store.transition(Move(rec.id, 4, S.RUNNING, S.STARTING, E.RESTART,
                                  EdgeKind.COMMAND), actor="user", at=clock.now())
    clock.advance(batch_fleet.command_grace)  # past the restart's grace: "died" is news
    (after,) = batch_fleet.observe_many([(stale, observation(case, rec))])
    assert spy_batches == [1]  # tried in the batch, a conflict there
    assert (after.state, after.version) == (S.FAILED, moved.version + 1)
    assert [h.from_state for h in store.history(rec.id)][-1] is S.STARTING


def test_a_failed_batch_write_falls_back_to_one_by_one(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cases = [c for c in CASES if c.name in ("died", "booted")]
    recs = [make_row(store, clock, c) for c in cases]

    def down(*_: object, **__: object) -> object:
        raise StoreError("database error: the disk is full")

    monkeypatch.setattr(store, "apply_batch", down)
    with caplog.at_level(logging.WARNING, "gpufsm.fleet"):
        after = batch_fleet.observe_many([(TrackedInstance.of(r), observation(c, r))
                                          for c, r in zip(cases, recs, strict=True)])
    assert [(c.name, a.state) for c, a in zip(cases, after, strict=True)] == [
        ("booted", S.RUNNING), ("died", S.FAILED)]
    assert "batched write of 2 observations failed" in caplog.text


def test_a_row_another_thread_holds_waits_for_observe(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock) -> None:
    case = next(c for c in CASES if c.name == "died")
    busy, free = make_row(store, clock, case), make_row(store, clock, case)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with batch_fleet._lock(busy.id):
            held.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        held.wait(10)
        done = batch_fleet.observe_batched([(TrackedInstance.of(busy), observation(case, busy)),
                                            (TrackedInstance.of(free), observation(case, free))])
    finally:
        release.set()
        worker.join()
    assert done[0] is None and done[1] is not None and done[1].state is S.FAILED
    assert store.get(busy.id).state is S.RUNNING


def test_an_overridden_observe_sees_every_observation(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    case = next(c for c in CASES if c.name == "quiet")
    recs = [make_row(store, clock, case) for _ in range(3)]
    seen: list[str] = []
    real = batch_fleet.observe

    def counting(instance_id: str, obs: Observation, **kw: Any) -> InstanceRecord:
        seen.append(instance_id)
        return real(instance_id, obs, **kw)

    monkeypatch.setattr(batch_fleet, "observe", counting)
    items = [(TrackedInstance.of(r), observation(case, r)) for r in recs]
    assert batch_fleet.observe_batched(items) == [None, None, None]
    batch_fleet.observe_many(items)
    assert seen == [r.id for r in recs]


def test_one_failure_is_reported_and_the_others_still_apply(
        batch_fleet: Fleet, store: SqlInstanceStore, clock: FakeClock) -> None:
    died = next(c for c in CASES if c.name == "died")
    ok = make_row(store, clock, died)
    ghost = TrackedInstance.of(replace(ok, id=str(uuid.uuid4())))  # no such row
    drift = next(c for c in CASES if c.name == "drift")
    odd = make_row(store, clock, drift)
    errors: dict[str, Exception] = {}
    after = batch_fleet.observe_many(
        [(ghost, observation(died, ok)), (TrackedInstance.of(odd), observation(drift, odd)),
         (TrackedInstance.of(ok), observation(died, ok))], on_error=errors.__setitem__)
    assert list(errors) == [ghost.id] and "no instance" in str(errors[ghost.id])
    assert after[0] == ghost and after[2].state is S.FAILED
    assert len(store.drift(odd.id)) == 1
    with pytest.raises(Exception, match=ghost.id):
        batch_fleet.observe_many([(ghost, observation(died, ok))])


def test_a_batch_logs_each_line_once(batch_fleet: Fleet, store: SqlInstanceStore,
                                        clock: FakeClock,
                                        caplog: pytest.LogCaptureFixture) -> None:
    odd = next(c for c in CASES if c.name == "unknown raw status")
    drift = next(c for c in CASES if c.name == "drift")
    rows = [make_row(store, clock, odd), make_row(store, clock, drift)]
    with caplog.at_level(logging.INFO, "gpufsm.fleet"):
        batch_fleet.observe_many([(TrackedInstance.of(rows[0]), observation(odd, rows[0])),
                                  (TrackedInstance.of(rows[1]), observation(drift, rows[1]))])
        batch_fleet.observe_many([(TrackedInstance.of(store.get(rows[0].id)),
                                   observation(odd, rows[0]))])  # facts unchanged now
    lines = [r.getMessage() for r in caplog.records]
    assert sum("zz-new" in line for line in lines) == 2  # once per observation
    assert sum(line.startswith("drift on") for line in lines) == 1


# -- the reconcile pass -------------------------------------------------------------------


def _fleet_on_cloud(fleet: Fleet, cloud: SimulatedCloud, n: int) -> list[str]:
    ids = [fleet.launch({"provider": "sim", "instance_type": "gpu_1x_a10", "name": f"j{i}"}).id
           for i in range(n)]
    for i in ids:
        fleet.wait_for(i, S.RUNNING, timeout=600)
    return ids


def test_a_pass_commits_its_sync_in_one_batch(
        fleet: Fleet, cloud: SimulatedCloud, store: SqlInstanceStore,
        spy_batches: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _fleet_on_cloud(fleet, cloud, 8)
    for i in ids[:3]:
        cloud.kill(fleet.get(i).provider_instance_id or "")
    reads: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda i: reads.append(i) or real_get(i))
    report = Reconciler(fleet).run_once()
    assert not set(reads) & set(ids[3:])  # quiet rows were never read one by one
    # the sync's three observed_failed together, then the three terminate intents
    # together, before any of them is sent, then what the three looks after the calls
    # saw (each GET's facts), together
    assert spy_batches == [3, 3, 3]
    assert sorted((c.instance_id, c.to_state) for c in report.changes
                  if c.event == "observed_failed") == sorted((i, "FAILED") for i in ids[:3])
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3 + [S.RUNNING] * 5
    quiet = Reconciler(fleet).run_once()
    assert quiet.changes == [] and spy_batches == [3, 3, 3]  # nothing to write: no batch


def test_orphans_are_matched_in_one_read(fleet: Fleet, cloud: SimulatedCloud,
                                         store: SqlInstanceStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _fleet_on_cloud(fleet, cloud, 6)
    orphan = cloud.spawn_untracked("gpufsm-orphan0001")
    cloud.settle(120)
    finds: list[object] = []
    batches: list[int] = []
    real_find, real_many = store.find, store.find_tracked
    monkeypatch.setattr(store, "find", lambda *a, **k: finds.append(k) or real_find(*a, **k))
    monkeypatch.setattr(store, "find_tracked",
                        lambda *a, **k: batches.append(len(k["tags"])) or real_many(*a, **k))
    report = Reconciler(fleet).run_once()
    (problem,) = report.problems_of("orphan")
    assert orphan in problem.message
    assert finds == [] and batches == [1]  # only the orphan was not already held


def test_the_collector_rests_during_a_pass_and_resumes_after(
        fleet: Fleet, cloud: SimulatedCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    _fleet_on_cloud(fleet, cloud, 2)
    during: list[bool] = []
    real = cloud.list_instances
    monkeypatch.setattr(cloud, "list_instances",
                        lambda: during.append(gc.isenabled()) or real())
    assert gc.isenabled()
    Reconciler(fleet).run_once()
    assert during == [False] and gc.isenabled()


def test_terminates_of_a_pass_commit_together_and_fall_back_one_by_one(
        fleet: Fleet, cloud: SimulatedCloud, store: SqlInstanceStore,
        spy_batches: list[int]) -> None:
    """The intents go in one transaction before any call; a refused call leaves its row
    TERMINATING with the error; a row another thread holds is left to ``terminate``."""
    ids = _fleet_on_cloud(fleet, cloud, 4)
    cloud.fail_next("terminate", "unavailable")
    holding, done = threading.Event(), threading.Event()

    def command_under_way() -> None:  # another thread holds the last row
        with fleet._lock(ids[3]):
            holding.set()
            done.wait(10)

    other = threading.Thread(target=command_under_way)
    other.start()
    holding.wait(10)
    try:
        ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    finally:
        done.set()
        other.join(10)
    # the three intents in one batch; then the looks of the two calls that went out
    assert sorted(ended) == sorted(ids[:3]) and spy_batches == [3, 2]
    errors = [i for i in ids[:3] if ended[i].error is not None]
    assert len(errors) == 1 and store.get(errors[0]).state is S.TERMINATING
    for i in ids[:3]:
        assert ended[i].after == store.get(i)
        assert ended[i].moves[0].event is E.TERMINATE
    assert store.get(ids[3]).state is S.RUNNING  # not touched: the single path's turn
