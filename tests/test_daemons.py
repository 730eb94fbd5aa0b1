"""Several reconcile daemons on one PostgreSQL against one emulator that counts calls."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from gpufsm import Fleet, InstanceState, SqlInstanceStore
from gpufsm.adapters import RetryPolicy, adapter_class
from gpufsm.reconcile import ReconcileConfig, Reconciler
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants
from gpufsm.testing.emulators import EmulatorRequest, EmulatorResponse, EmulatorServer, make_dialect

pytestmark = pytest.mark.postgres

KEY = "daemon-test-key"
S = InstanceState
SPEC = {"provider": "lambda", "instance_type": "gpu_1x_a10", "region": "us-east-1",
        "ssh_key_names": ["k"]}


@dataclass
class World:
    clock: FakeClock
    cloud: SimulatedCloud
    server: EmulatorServer
    terminates: Counter[str]
    launches: list[str]

    def adapter(self) -> object:
        return adapter_class("lambda")(SecretStr(KEY), base_url=self.server.url,
                                       rate_limits={}, clock=self.clock,
                                       retry=RetryPolicy(attempts=3, initial=0.01))


@pytest.fixture
def world() -> Iterator[World]:
    clock = FakeClock()
    cloud = SimulatedCloud("lambda", clock=clock, seed=11)
    server = EmulatorServer(make_dialect("lambda", cloud), api_key=KEY).start()
    terminates: Counter[str] = Counter()
    launches: list[str] = []
    lock = threading.Lock()

    def count(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        if req.method == "POST" and resp.status == 200:
            with lock:
                if req.path.endswith("/instance-operations/terminate"):
                    terminates.update(req.json()["instance_ids"])
                elif req.path.endswith("/instance-operations/launch"):
                    launches.extend(resp.body["data"]["instance_ids"])

    server.hooks.append(count)
    try:
        yield World(clock, cloud, server, terminates, launches)
    finally:
        server.stop()


def _daemon(world: World, url: str, name: str, batch: int | None = None
            ) -> tuple[Reconciler, SqlInstanceStore, object]:
    store = SqlInstanceStore(url)
    adapter = world.adapter()
    fleet = Fleet(store, [adapter], clock=world.clock, actor=name)  # type: ignore[list-item]
    config = ReconcileConfig(lease_ttl=600, lease_batch=batch)
    return Reconciler(fleet, config, actor=name), store, adapter


def _together(reconcilers: list[Reconciler]) -> None:
    """One pass of each daemon, all at the same moment."""
    barrier = threading.Barrier(len(reconcilers))
    errors: list[BaseException] = []

    def run(r: Reconciler) -> None:
        barrier.wait()
        try:
            report = r.run_once()
            assert report.ok, report.problems
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in reconcilers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_three_daemons_act_once_per_instance_and_take_over(world: World, pg_url: str) -> None:
    setup = SqlInstanceStore(pg_url, migrate=True)
    setup_adapter = world.adapter()
    fleet = Fleet(setup, [setup_adapter], clock=world.clock)  # type: ignore[list-item]
    ids = [fleet.launch({**SPEC, "name": f"w{n}"}).id for n in range(24)]
    for i in ids:
        fleet.wait_for(i, S.RUNNING, timeout=900)
    assert len(world.launches) == 24 == len(set(world.launches))  # one launch each

    daemons = [_daemon(world, pg_url, f"daemon-{n}", batch=10) for n in range(3)]
    reconcilers = [d[0] for d in daemons]
    try:
        killed = [fleet.get(i).provider_instance_id or "" for i in ids[:12]]
        for pid in killed:
            world.cloud.kill(pid)
        for _ in range(3):
            _together(reconcilers)
        assert sorted(world.terminates) == sorted(killed)
        assert set(world.terminates.values()) == {1}  # each terminate issued once

        # daemon-0 dies holding leases; the other two take its rows after the TTL.
        held = {r.id for r in setup.list() if r.state is S.RUNNING}
        doomed = [fleet.get(i).provider_instance_id or "" for i in sorted(held)[:4]]
        for pid in doomed:
            world.cloud.kill(pid)
        _together(reconcilers[1:])
        world.clock.advance(601)  # every lease has expired now
        _together(reconcilers[1:])
        _together(reconcilers[1:])
        assert all(world.terminates[pid] == 1 for pid in doomed)
        assert set(world.terminates.values()) == {1}
        world.cloud.settle(3600)
        for _ in range(2):
            _together(reconcilers[1:])
        finished = [setup.get(i).state for i in ids[:12]]
        assert finished == [S.TERMINATED] * 12
        assert check_invariants(setup) == []
    finally:
        for _, store, adapter in daemons:
            adapter.close()  # type: ignore[attr-defined]
            store.close()
        setup_adapter.close()  # type: ignore[attr-defined]
        setup.close()


def test_leases_spread_work_across_daemons(world: World, pg_url: str) -> None:
    setup = SqlInstanceStore(pg_url, migrate=True)
    setup_adapter = world.adapter()
    fleet = Fleet(setup, [setup_adapter], clock=world.clock)  # type: ignore[list-item]
    for n in range(30):
        fleet.launch({**SPEC, "name": f"s{n}"})
    daemons = [_daemon(world, pg_url, f"d{n}", batch=10) for n in range(3)]
    try:
        _together([d[0] for d in daemons])
        owners = Counter(
            r.lease_owner for r in _lease_rows(setup))
        assert sorted(owners.values()) == [10, 10, 10]
        assert daemons[0][0].release() == 10
    finally:
        for _, store, adapter in daemons:
            adapter.close()  # type: ignore[attr-defined]
            store.close()
        setup_adapter.close()  # type: ignore[attr-defined]
        setup.close()


def _lease_rows(store: SqlInstanceStore) -> list[object]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return list(conn.execute(text("SELECT lease_owner FROM gpufsm_instances")))
