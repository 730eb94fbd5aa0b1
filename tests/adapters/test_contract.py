"""One contract, every adapter: each real adapter against its emulator over loopback HTTP.

Provider-specific behaviour is tested beside each adapter; this suite holds them all to
the ProviderAdapter contract the engine relies on, and then drives the engine itself
(Fleet + SQLite store) over HTTP with 429s and 5xx injected, ending with nothing left.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from gpufsm import (
    Capabilities,
    Fleet,
    InstanceState,
    InsufficientCapacity,
    PermanentProviderError,
    ProviderAdapter,
    SqlInstanceStore,
)
from gpufsm.adapters import (
    InstanceTypeOffer,
    LaunchRequest,
    RetryPolicy,
    adapter_class,
    ownership_tag,
)
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud, check_invariants
from gpufsm.testing.emulators import EmulatorServer, HttpFault, make_dialect

S = InstanceState
KEY = "contract-key-5d3a9f"


@dataclass(frozen=True)
class Pair:
    provider: str
    capabilities: Capabilities
    offers: tuple[InstanceTypeOffer, ...]
    spec: dict[str, Any]
    credit_error: type[Exception] = field(default=PermanentProviderError)


def _offer(name: str, price: float, regions: tuple[str, ...]) -> InstanceTypeOffer:
    return InstanceTypeOffer("sim", name, price, regions, 1, name)


PAIRS = [
    Pair("lambda", Capabilities(stop=False, restart=True, tags=True),
         (_offer("gpu_1x_a10", 0.75, ("us-east-1",)), _offer("gpu_8x_h100", 23.9, ())),
         {"instance_type": "gpu_1x_a10", "region": "us-east-1", "ssh_key_names": ["k"]}),
    Pair("novita", Capabilities(stop=True, restart=True, tags=False),
         (_offer("RTX 4090 24GB", 0.35, ("us-ca-01",)), _offer("A100 SXM 80GB", 1.6, ())),
         {"instance_type": "RTX 4090 24GB", "image": "pytorch/pytorch:2.3.0"}),
    Pair("runpod", Capabilities(stop=True, restart=True, tags=False),
         (_offer("NVIDIA A40", 0.44, ("EU-RO-1",)), _offer("NVIDIA B200", 5.99, ())),
         {"instance_type": "NVIDIA A40", "image": "runpod/pytorch:2.4.0"}),
    Pair("vastai", Capabilities(stop=True, restart=True, tags=False),
         (_offer("RTX 4090", 0.35, ("US",)), _offer("H200", 3.1, ())),
         {"instance_type": "RTX 4090", "image": "pytorch/pytorch:latest"}),
]
SOLD_OUT = {"lambda": "gpu_8x_h100", "novita": "A100 SXM 80GB", "runpod": "NVIDIA B200",
            "vastai": "H200"}
#: Vast's ids are integers: the simulated cloud numbers its instances the same way.
ID_STYLE = {"vastai": {"id_prefix": "", "id_width": 0}}


@dataclass
class Rig:
    pair: Pair
    clock: FakeClock
    cloud: SimulatedCloud
    server: EmulatorServer
    adapter: Any

    def spec(self, **overrides: Any) -> InstanceSpec:
        return InstanceSpec(**{"provider": self.pair.provider, "name": "contract",
                               **self.pair.spec, **overrides})

    def launch(self, token: str = "c0ffee01", **overrides: Any) -> str:
        pid: str = self.adapter.launch(
            LaunchRequest(self.spec(**overrides), ownership_tag(token), token))
        return pid


@pytest.fixture(params=PAIRS, ids=[p.provider for p in PAIRS])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    pair: Pair = request.param
    clock = FakeClock()
    cloud = SimulatedCloud(pair.provider, clock=clock, seed=3, capabilities=pair.capabilities,
                           instance_types=pair.offers, **ID_STYLE.get(pair.provider, {}))
    server = EmulatorServer(make_dialect(pair.provider, cloud), api_key=KEY).start()
    adapter = adapter_class(pair.provider)(
        SecretStr(KEY), base_url=server.url, clock=clock, rate_limits={},
        retry=RetryPolicy(attempts=5, initial=0.01, max_backoff=0.05))
    try:
        yield Rig(pair, clock, cloud, server, adapter)
    finally:
        adapter.close()
        server.stop()


def test_is_a_provider_adapter_with_declared_capabilities(rig: Rig) -> None:
    assert isinstance(rig.adapter, ProviderAdapter)
    assert rig.adapter.name == rig.pair.provider
    assert rig.adapter.capabilities == rig.pair.capabilities
    assert KEY not in repr(rig.adapter)


def test_lifecycle_launch_to_gone(rig: Rig) -> None:
    pid = rig.launch()
    seen = rig.adapter.get(pid)
    assert seen is not None and seen.state in (S.CREATED, S.STARTING)
    assert seen.tag == ownership_tag("c0ffee01")
    rig.cloud.settle(600)
    running = rig.adapter.get(pid)
    assert running is not None and running.state is S.RUNNING and running.ip
    if rig.pair.capabilities.stop:
        rig.adapter.stop(pid)
        rig.cloud.settle(600)
        assert rig.adapter.get(pid).state is S.STOPPED
        rig.adapter.start(pid)
        rig.cloud.settle(600)
        assert rig.adapter.get(pid).state is S.RUNNING
    rig.adapter.restart(pid)
    rig.cloud.settle(600)
    assert rig.adapter.get(pid).state is S.RUNNING
    rig.adapter.terminate(pid)
    after = rig.adapter.get(pid)
    assert after is None or after.state in (S.TERMINATING, S.TERMINATED)
    rig.cloud.settle(3600)
    assert rig.adapter.get(pid) is None
    rig.adapter.terminate(pid)  # idempotent: not-found is done
    assert all(i.provider_instance_id != pid for i in rig.adapter.list_instances())
    assert rig.cloud.live_instances() == []


def test_listing_marks_ours_and_only_ours(rig: Rig) -> None:
    ours = rig.launch("aaaa1111")
    theirs = rig.cloud.spawn_untracked(None, instance_type=rig.pair.offers[0].name)
    listing = {i.provider_instance_id: i for i in rig.adapter.list_instances()}
    assert listing[ours].tag == ownership_tag("aaaa1111")
    assert listing[theirs].tag is None


def test_unknown_instance_reads_as_absent(rig: Rig) -> None:
    pid = rig.launch()
    rig.cloud.vanish(pid)
    assert rig.adapter.get(pid) is None
    rig.adapter.terminate(pid)


def test_capacity_is_a_permanent_refusal(rig: Rig) -> None:
    with pytest.raises(InsufficientCapacity):
        rig.launch(instance_type=SOLD_OUT[rig.pair.provider])
    assert rig.cloud.live_instances() == []


def test_credit_refusal_is_permanent(rig: Rig) -> None:
    rig.cloud.credit_ok = False
    with pytest.raises(PermanentProviderError):
        rig.launch()
    assert rig.cloud.live_instances() == []


def test_unknown_raw_status_is_unknown_not_an_error(rig: Rig) -> None:
    pid = rig.launch()
    rig.cloud.set_raw_status(pid, "zz-brand-new")
    seen = rig.adapter.get(pid)
    assert seen is not None and seen.state is None and "zz-brand-new" in seen.raw_status


def test_engine_drives_a_whole_life_over_http_through_faults(rig: Rig, tmp_path: Any) -> None:
    store = SqlInstanceStore(f"sqlite:///{tmp_path / 'contract.db'}")
    fleet = Fleet(store, [rig.adapter], clock=rig.clock, actor="contract")
    try:
        rig.server.inject(HttpFault("429", times=2, retry_after=1))
        rec = fleet.launch({"provider": rig.pair.provider, "name": "e2e", **rig.pair.spec})
        rig.server.inject(HttpFault("429", times=1))  # without Retry-After
        rig.server.inject(HttpFault("5xx", times=2, method="GET", status=503))
        rec = fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        if rig.pair.capabilities.stop:
            fleet.stop(rec.id)
            fleet.wait_for(rec.id, S.STOPPED, timeout=900, poll_interval=5)
            fleet.start(rec.id)
            fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        rig.server.inject(HttpFault("5xx", times=1, status=502, method="GET"))
        fleet.restart(rec.id)
        fleet.wait_for(rec.id, S.RUNNING, timeout=900, poll_interval=5)
        rig.server.inject(HttpFault("429", times=1, retry_after=2))
        fleet.terminate(rec.id)
        final = fleet.wait_for(rec.id, S.TERMINATED, timeout=900, poll_interval=5)
        assert final.billable is False
        assert check_invariants(store) == []
        rig.cloud.settle(3600)
        assert rig.cloud.live_instances() == []
        statuses = [status for _, _, status in rig.server.log]
        assert statuses.count(429) >= 3 and 503 in statuses  # the faults really happened
    finally:
        store.close()
