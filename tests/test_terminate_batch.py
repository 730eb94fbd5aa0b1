"""Batched terminates through an adapter that terminates many ids in one request
(``BatchTerminate``): one call per batch, the answer taken as the look, and every failure
(a temporary error, a refusal of the whole request, an id the answer leaves out) sent
and looked at one by one, as an adapter without the capability is, until a single call
is refused for the whole account (a revoked key): then nothing more is sent that pass.

The in-process half runs a ``SimulatedCloud`` given the capability here (``BatchSim``:
its ``terminate_many`` calls the simulator's ``terminate`` per id, so ``fail_next``
still injects per call) over every store backend; the HTTP half runs the Lambda adapter
against its loopback emulator and counts requests at the adapter's seam.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from gpufsm import Fleet, InstanceState
from gpufsm.adapters import BatchTerminate, ProviderInstance, RetryPolicy
from gpufsm.adapters.lambda_cloud import LambdaCloudAdapter
from gpufsm.errors import (
    AuthError,
    InsufficientCredit,
    ProviderError,
    ProviderNotFound,
    QuotaExceeded,
)
from gpufsm.machines import Capabilities, Event
from gpufsm.reconcile import ReconcileConfig, Reconciler
from gpufsm.store import SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, HttpFault
from gpufsm.testing.emulators.lambda_cloud import LambdaDialect

S = InstanceState
E = Event
SPEC = {"provider": "sim", "instance_type": "gpu_1x_a10"}


class BatchSim(SimulatedCloud):
    """The simulated cloud with Lambda's many-ids terminate: all or nothing when an id is
    unknown (not-found for the whole request), each id through ``terminate`` (so its
    faults fire), the answer the instances as they now stand; ``leave_out`` ids are
    terminated but missing from the answer; with ``account_error`` set (a revoked key)
    every terminate, batched or single, is refused with it (``refused`` counts the
    single ones)."""

    terminate_batch_max = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []
        self.leave_out: set[str] = set()
        self.account_error: ProviderError | None = None
        self.refused: list[str] = []

    def terminate_many(self, provider_instance_ids: Sequence[str]
                       ) -> Mapping[str, ProviderInstance]:
        ids = list(provider_instance_ids)
        assert 0 < len(ids) <= self.terminate_batch_max
        self.batches.append(ids)
        if self.account_error is not None:
            raise self.account_error
        if any(self._gone(pid) for pid in ids):
            raise ProviderNotFound("an instance does not exist", provider=self.name)
        for pid in ids:
            self.terminate(pid)
        return {pid: self._view(self.instance(pid)) for pid in ids
                if pid not in self.leave_out}

    def terminate(self, provider_instance_id: str) -> None:
        if self.account_error is not None:
            self.refused.append(provider_instance_id)
            raise self.account_error
        super().terminate(provider_instance_id)

    def _gone(self, pid: str) -> bool:
        try:
            return self.instance(pid).removed
        except KeyError:
            return True


@pytest.fixture
def batch_cloud(clock: FakeClock) -> BatchSim:
    return BatchSim("sim", clock=clock, seed=1)


def _world(store: SqlInstanceStore, cloud: SimulatedCloud, clock: FakeClock, n: int
           ) -> tuple[Fleet, list[str]]:
    fleet = Fleet(store, [cloud], clock=clock, actor="test")
    ids = [fleet.launch({**SPEC, "name": f"j{i}"}).id for i in range(n)]
    for i in ids:
        fleet.wait_for(i, S.RUNNING, timeout=600)
    cloud.calls.clear()
    return fleet, ids


def _pid(fleet: Fleet, instance_id: str) -> str:
    pid = fleet.get(instance_id).provider_instance_id
    assert pid is not None
    return pid


def _story(fleet: Fleet, instance_id: str) -> tuple[object, ...]:
    """What a terminate leaves on one row, without its identity."""
    row = fleet.get(instance_id)
    return (row.state, row.last_raw_status, row.last_error, row.version,
            [(h.from_state, h.to_state, h.event, h.kind, h.actor, h.at, h.reason,
              h.raw_status) for h in fleet.history(instance_id)])


def test_the_simulator_alone_has_no_batch_terminate(batch_cloud: BatchSim) -> None:
    assert isinstance(batch_cloud, BatchTerminate)
    assert not isinstance(SimulatedCloud(), BatchTerminate)


def test_a_batch_leaves_each_row_as_the_one_by_one_path_does(
        store: SqlInstanceStore) -> None:
    """Two worlds alike but for the capability (one store, two clouds and clocks that
    start at the same instant): the same rows, the same history at the same instants;
    the batch world made one call per three ids and no GET."""
    stories = []
    for cloud_type, prefix in ((SimulatedCloud, "sim-a"), (BatchSim, "sim-b")):
        clock = FakeClock()
        cloud = cloud_type("sim", clock=clock, seed=1, id_prefix=prefix)
        fleet, ids = _world(store, cloud, clock, 7)
        ended = fleet._terminate_outcomes([(i, "done") for i in ids])
        assert sorted(ended) == sorted(ids)
        assert all(e.error is None and e.after == fleet.get(i) for i, e in ended.items())
        stories.append([_story(fleet, i) for i in ids])
        if isinstance(cloud, BatchSim):
            assert [len(b) for b in cloud.batches] == [3, 3, 1]
            assert cloud.calls["get"] == 0
        else:
            assert cloud.calls["get"] == 7
        assert cloud.calls["terminate"] == 7
    assert stories[0] == stories[1]
    assert {s[:3] for s in stories[1]} == {(S.TERMINATING, "terminating", None)}


def test_a_temporary_error_sends_each_row_alone(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """The batch fails (its first id's call); then the first single call fails too: that
    row keeps TERMINATING with the error, as the one-by-one path leaves it; the others
    are sent alone and read back with a GET."""
    fleet, ids = _world(store, batch_cloud, clock, 3)
    batch_cloud.fail_next("terminate", "unavailable", times=2)
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert len(batch_cloud.batches) == 1
    failed = [i for i in ids if ended[i].error is not None]
    assert failed == [ids[0]]
    row = fleet.get(ids[0])
    assert row.state is S.TERMINATING and row.last_error is not None
    assert "injected unavailable fault" in row.last_error
    assert ended[ids[0]].after == row
    assert batch_cloud.calls["get"] == 2  # the two sent alone were looked at
    for i in ids[1:]:
        assert fleet.get(i).state is S.TERMINATING
        assert fleet.get(i).last_raw_status == "terminating"
        assert fleet.get(i).last_error is None


def test_one_unknown_id_never_holds_back_the_others(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """The provider refuses the whole request for one id it does not know; each row is
    then sent alone: the unknown one's terminate is done (not-found = done; its GET's
    not-found is applied as the one-by-one path applies it), the others terminate."""
    fleet, ids = _world(store, batch_cloud, clock, 3)
    batch_cloud.vanish(_pid(fleet, ids[1]))
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert len(batch_cloud.batches) == 1
    assert all(e.error is None for e in ended.values())
    assert batch_cloud.calls["terminate"] == 3  # the three sent alone
    assert batch_cloud.calls["get"] == 3
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3
    assert [fleet.get(i).last_raw_status for i in (ids[0], ids[2])] == ["terminating"] * 2


def test_an_id_left_out_of_the_answer_is_sent_and_looked_at_alone(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """Missing from the answer proves nothing: that row is not concluded gone; it is
    sent again alone and its GET decides (here: still there, terminating)."""
    fleet, ids = _world(store, batch_cloud, clock, 3)
    left = _pid(fleet, ids[2])
    batch_cloud.leave_out = {left}
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert len(batch_cloud.batches) == 1
    assert batch_cloud.calls["terminate"] == 4  # three in the batch, one alone
    assert batch_cloud.calls["get"] == 1
    assert all(e.error is None for e in ended.values())
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3
    assert ended[ids[2]].moves[0].event is E.TERMINATE


def test_an_answered_terminal_status_is_applied_as_a_get_would_be(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """The answer is a read: an instance the provider already shows terminated ends the
    row TERMINATED, with the moves listed for the report."""
    fleet, ids = _world(store, batch_cloud, clock, 2)
    batch_cloud.set_raw_status(_pid(fleet, ids[0]), "terminated")
    real = batch_cloud.terminate

    def keep_override(pid: str) -> None:  # the provider had it terminated already
        override = batch_cloud.instance(pid).raw_override
        real(pid)
        batch_cloud.instance(pid).raw_override = override

    batch_cloud.terminate = keep_override  # type: ignore[method-assign,assignment]
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert fleet.get(ids[0]).state is S.TERMINATED
    assert ended[ids[0]].after == fleet.get(ids[0])
    assert ended[ids[0]].moves[0].event is E.TERMINATE
    assert len(ended[ids[0]].moves) >= 2
    assert fleet.get(ids[1]).state is S.TERMINATING
    assert batch_cloud.calls["get"] == 0


def test_a_pass_ends_its_dead_instances_in_one_call(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    fleet, ids = _world(store, batch_cloud, clock, 5)
    for i in ids[:3]:
        batch_cloud.kill(_pid(fleet, i))
    batch_cloud.calls.clear()
    report = Reconciler(fleet).run_once()
    assert report.ok, report.problems
    assert [sorted(b) for b in batch_cloud.batches] == [sorted(_pid(fleet, i) for i in ids[:3])]
    assert batch_cloud.calls["get"] == 0
    events = [c.event for c in report.changes]
    assert events.count("observed_failed") == 3 and events.count("terminate") == 3
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3 + [S.RUNNING] * 2


def test_a_crash_before_the_call_leaves_rows_the_next_pass_re_issues(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """Intents first: a process dying between the commit and the call leaves
    TERMINATING rows; the next pass sends them (in one call) and they end TERMINATED."""
    fleet, ids = _world(store, batch_cloud, clock, 3)

    class Died(BaseException):
        pass

    def die(pids: Sequence[str]) -> Mapping[str, ProviderInstance]:
        raise Died

    batch_cloud.terminate_many = die  # type: ignore[method-assign,assignment]
    with pytest.raises(Died):
        fleet._terminate_outcomes([(i, "done") for i in ids])
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3
    assert batch_cloud.calls["terminate"] == 0
    del batch_cloud.terminate_many  # the restarted process: the real method again
    config = ReconcileConfig(terminate_backoff=1.0, terminate_backoff_cap=1.0)
    clock.advance(5)
    Reconciler(Fleet(store, [batch_cloud], clock=clock, actor="restarted"), config).run_once()
    assert [sorted(b) for b in batch_cloud.batches] == [sorted(_pid(fleet, i) for i in ids)]
    for _ in range(20):
        if all(fleet.get(i).state is S.TERMINATED for i in ids):
            break
        clock.advance(60)
        Reconciler(Fleet(store, [batch_cloud], clock=clock, actor="restarted"),
                   config).run_once()
    assert [fleet.get(i).state for i in ids] == [S.TERMINATED] * 3
    assert not batch_cloud.live_instances()


ACCOUNT_ERRORS = [
    AuthError("invalid API key", provider="sim", code="global/invalid-api-key",
              status_code=401),
    InsufficientCredit("the account cannot pay", provider="sim", code="credit"),
    QuotaExceeded("account limit reached", provider="sim", code="quota"),
]


@pytest.mark.parametrize("refusal", ACCOUNT_ERRORS, ids=lambda e: type(e).__name__)
def test_an_account_wide_refusal_stops_the_pass_sending(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock,
        refusal: ProviderError) -> None:
    """Eight rows in chunks of 3, 3, 2; the key is refused for everything: one batch,
    one single (the proof), then nothing more: not the rest of that chunk, not the later
    chunks. Every row stays TERMINATING (nothing concluded, no GET), its error the
    refusal's class and text, the unsent ones marked so; the next pass re-issues them."""
    fleet, ids = _world(store, batch_cloud, clock, 8)
    pids = [_pid(fleet, i) for i in ids]
    batch_cloud.account_error = refusal
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert batch_cloud.batches == [pids[:3]]
    assert batch_cloud.refused == [pids[0]]
    assert batch_cloud.calls["get"] == 0
    name = type(refusal).__name__
    for n, i in enumerate(ids):
        row = fleet.get(i)
        assert row.state is S.TERMINATING
        assert row.last_error is not None and row.last_error.startswith(f"{name}: sim: ")
        assert str(refusal.message) in row.last_error and f"[{refusal.code}]" in row.last_error
        not_sent = f"(not sent: the same account-wide error refused {pids[0]})"
        assert (not_sent in row.last_error) is (n > 0)
        assert type(ended[i].error) is type(refusal)
        assert ended[i].after == row
    batch_cloud.account_error = None  # the key restored: the next pass sends them all
    ended = fleet._terminate_outcomes([(i, "again") for i in ids])
    assert batch_cloud.batches[1:] == [pids[:3], pids[3:6], pids[6:]]
    assert all(e.error is None for e in ended.values())
    assert [fleet.get(i).last_raw_status for i in ids] == ["terminating"] * 8


@pytest.mark.parametrize("fault", ["invalid", "unavailable", "rate_limit", "timeout"])
def test_an_error_about_one_id_or_temporary_stops_nothing(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock,
        fault: str) -> None:
    """A refusal of this instance (its state) or a temporary error, on the batch and on
    the first single: that row keeps the error, the rest of the chunk is still sent
    alone, the later chunks still batched; no row says "not sent"."""
    fleet, ids = _world(store, batch_cloud, clock, 8)
    pids = [_pid(fleet, i) for i in ids]
    batch_cloud.fail_next("terminate", fault, times=2)
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert batch_cloud.batches == [pids[:3], pids[3:6], pids[6:]]
    assert batch_cloud.calls["terminate"] == 1 + 3 + 3 + 2  # batch's first; alone; batched
    assert [i for i in ids if ended[i].error is not None] == [ids[0]]
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 8
    assert all(fleet.get(i).last_error is None for i in ids[1:])
    assert "not sent" not in (fleet.get(ids[0]).last_error or "")


def test_a_not_found_in_the_fallback_still_sends_the_rest(
        store: SqlInstanceStore, batch_cloud: BatchSim, clock: FakeClock) -> None:
    """One unknown id in the middle chunk: that chunk alone, each id sent (the unknown
    one is done), and the chunk after it still goes out batched."""
    fleet, ids = _world(store, batch_cloud, clock, 8)
    pids = [_pid(fleet, i) for i in ids]
    batch_cloud.vanish(pids[4])
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert batch_cloud.batches == [pids[:3], pids[3:6], pids[6:]]
    assert batch_cloud.calls["terminate"] == 3 + 3 + 2
    assert all(e.error is None for e in ended.values())
    assert all(fleet.get(i).last_error is None for i in ids)
    assert [fleet.get(i).state for n, i in enumerate(ids) if n != 4] == [S.TERMINATING] * 7


# ---- over HTTP: the Lambda adapter and its emulator --------------------------------------

KEY = "batch-terminate-key"
LAMBDA_CAPS = Capabilities(stop=False, restart=True, tags=True)
LAMBDA_SPEC = {"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1",
               "ssh_key_names": ["laptop"]}
TERMINATE = "POST /api/v1/instance-operations/terminate"


@pytest.fixture
def lambda_world(store: SqlInstanceStore, clock: FakeClock
                 ) -> Iterator[tuple[Fleet, SimulatedCloud, EmulatorServer, LambdaCloudAdapter]]:
    cloud = SimulatedCloud("lambda", clock=clock, seed=3, capabilities=LAMBDA_CAPS)
    with EmulatorServer(LambdaDialect(cloud), api_key=KEY) as server:
        adapter = LambdaCloudAdapter(KEY, base_url=server.url, clock=clock, rate_limits={},
                                     retry=RetryPolicy(attempts=3, initial=0.01))
        try:
            yield Fleet(store, [adapter], clock=clock, actor="test"), cloud, server, adapter
        finally:
            adapter.close()


def _lambda_rows(fleet: Fleet, cloud: SimulatedCloud, server: EmulatorServer, n: int,
                 clock: FakeClock) -> list[str]:
    ids = [fleet.launch({**LAMBDA_SPEC, "name": f"j{i}"}).id for i in range(n)]
    clock.advance(timedelta(minutes=10).total_seconds())
    cloud.settle(0)
    for i in ids:
        fleet.refresh(i)
    assert {fleet.get(i).state for i in ids} == {S.RUNNING}
    server.counts.clear()
    return ids


def test_fifty_terminates_cost_one_request_over_http(
        lambda_world: tuple[Fleet, SimulatedCloud, EmulatorServer, LambdaCloudAdapter],
        clock: FakeClock) -> None:
    fleet, cloud, server, adapter = lambda_world
    ids = _lambda_rows(fleet, cloud, server, 50, clock)
    for i in ids:
        cloud.kill(_pid(fleet, i))
    before = adapter.seam.calls
    report = Reconciler(fleet).run_once()
    assert report.ok, report.problems
    assert adapter.seam.calls - before == 2  # the listing and one terminate
    assert server.counts[TERMINATE] == 1
    assert not [k for k in server.counts if k.startswith("GET /api/v1/instances/")]
    assert {(fleet.get(i).state, fleet.get(i).last_raw_status) for i in ids} == {
        (S.TERMINATING, "terminating")}
    assert [c.event for c in report.changes].count("terminate") == 50


def test_a_refused_batch_over_http_is_sent_one_by_one(
        lambda_world: tuple[Fleet, SimulatedCloud, EmulatorServer, LambdaCloudAdapter],
        clock: FakeClock) -> None:
    """One id Lambda does not know: the whole request is refused (404), then each row
    alone: the unknown one is done, the others terminate."""
    fleet, cloud, server, adapter = lambda_world
    ids = _lambda_rows(fleet, cloud, server, 4, clock)
    cloud.vanish(_pid(fleet, ids[0]))
    before = adapter.seam.calls
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert all(e.error is None for e in ended.values())
    assert adapter.seam.calls - before == 1 + 4 + 4  # the batch; each alone and its GET
    assert fleet.get(ids[0]).state is S.TERMINATED  # its GET: Lambda's own not-found
    assert [fleet.get(i).state for i in ids[1:]] == [S.TERMINATING] * 3
    assert all(fleet.get(i).last_error is None for i in ids)


def test_a_failing_batch_over_http_is_sent_one_by_one(
        lambda_world: tuple[Fleet, SimulatedCloud, EmulatorServer, LambdaCloudAdapter],
        clock: FakeClock) -> None:
    """5xx on every try of the batch request (the seam retries it: terminate is
    idempotent), then the single calls go through."""
    fleet, cloud, server, adapter = lambda_world
    ids = _lambda_rows(fleet, cloud, server, 3, clock)
    server.inject(HttpFault("5xx", times=3, method="POST", path_contains="terminate"))
    before = adapter.seam.calls
    ended = fleet._terminate_outcomes([(i, "done") for i in ids])
    assert all(e.error is None for e in ended.values())
    assert adapter.seam.calls - before == 3 + 3 + 3  # the batch's tries; each alone, a GET
    sent = [status for method, path, status in server.log if path.endswith("/terminate")]
    assert sent == [503, 503, 503, 200, 200, 200]
    assert [fleet.get(i).state for i in ids] == [S.TERMINATING] * 3
    assert all(fleet.get(i).last_error is None for i in ids)


def test_a_revoked_key_over_http_costs_two_requests_not_250(
        store: SqlInstanceStore, clock: FakeClock) -> None:
    """250 rows (chunks of 100, 100, 50) and an inactive account: the first batch and
    one single are refused (403), nothing else is sent; every row is TERMINATING with
    the error. The next pass re-issues them with the key revoked (401): two requests
    again. The key back: three batches, no single."""
    cloud = SimulatedCloud("lambda", clock=clock, seed=3, capabilities=LAMBDA_CAPS)
    config = ReconcileConfig(terminate_backoff=1.0, terminate_backoff_cap=1.0)
    with EmulatorServer(LambdaDialect(cloud), api_key=KEY) as server:
        adapter = LambdaCloudAdapter(KEY, base_url=server.url, clock=clock, rate_limits={},
                                     retry=RetryPolicy(attempts=3, initial=0.01))
        try:
            fleet = Fleet(store, [adapter], clock=clock, actor="test")
            ids = _lambda_rows(fleet, cloud, server, 250, clock)
            server.inject(HttpFault("error", times=10**6, path_contains="terminate",
                                    status=403, code="global/account-inactive"))
            ended = fleet._terminate_outcomes([(i, "done") for i in ids])
            assert server.counts[TERMINATE] == 2
            assert sum(server.counts.values()) == 2
            assert "not sent" not in (fleet.get(ids[0]).last_error or "")
            _assert_refused(fleet, ids, "global/account-inactive")
            assert all(isinstance(e.error, AuthError) for e in ended.values())

            server.clear_faults()
            server.inject(HttpFault("401", times=10**6, path_contains="terminate"))
            server.counts.clear()
            clock.advance(5)
            Reconciler(fleet, config).run_once()
            assert server.counts == {"GET /api/v1/instances": 1, TERMINATE: 2}
            _assert_refused(fleet, ids, "global/invalid-api-key")

            server.clear_faults()
            server.counts.clear()
            clock.advance(5)
            report = Reconciler(fleet, config).run_once()
            assert report.ok, report.problems
            assert server.counts[TERMINATE] == 3
            assert {(fleet.get(i).state, fleet.get(i).last_raw_status) for i in ids} == {
                (S.TERMINATING, "terminating")}
        finally:
            adapter.close()


def _assert_refused(fleet: Fleet, ids: list[str], code: str) -> None:
    """Every row TERMINATING, its last error the refusal: one row's its own (the one
    request sent alone), every other row's marked unsent and naming that row's id."""
    rows = [fleet.get(i) for i in ids]
    assert {r.state for r in rows} == {S.TERMINATING}
    errors = [r.last_error or "" for r in rows]
    assert all(e.startswith("AuthError: lambda: ") and f"[{code}]" in e for e in errors)
    sent = [r for r, e in zip(rows, errors, strict=True) if "not sent" not in e]
    assert len(sent) == 1
    unsent = [e for e in errors if f"(not sent: the same account-wide error refused "
              f"{sent[0].provider_instance_id})" in e]
    assert len(unsent) == len(ids) - 1
