"""The catalog over the four real adapters, each against its emulator on loopback HTTP.

Built as tests/adapters/test_contract.py builds its pairs (a SimulatedCloud, the
provider's dialect in an EmulatorServer, the real adapter pointed at it), with the
emulator profiles of ``gpufsm emulator`` plus A100 types written in each provider's own
words. Novita's profile sells an A100 PCIe 80GB in two clusters; its A100 SXM 80GB is
sold out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from gpufsm.adapters import (
    InstanceTypeOffer,
    LambdaCloudAdapter,
    NovitaAdapter,
    RetryPolicy,
    RunPodAdapter,
    VastAdapter,
)
from gpufsm.cli._emulator import PROFILES
from gpufsm.placement import Catalog, GpuModel, Requirements, explain, rank
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer
from gpufsm.testing.emulators.lambda_cloud import LambdaDialect
from gpufsm.testing.emulators.novita import NovitaDialect
from gpufsm.testing.emulators.runpod import RunPodDialect
from gpufsm.testing.emulators.vastai import VastDialect

KEY = "placement-key-7c1e"
ADAPTER: dict[str, Any] = {"lambda": LambdaCloudAdapter, "novita": NovitaAdapter,
                           "runpod": RunPodAdapter, "vastai": VastAdapter}
DIALECT: dict[str, Any] = {"lambda": LambdaDialect, "novita": NovitaDialect,
                           "runpod": RunPodDialect, "vastai": VastDialect}
#: A100s in each provider's words: (type, $/h, regions with capacity, GPUs, description).
A100_ROWS: dict[str, list[tuple[str, float, tuple[str, ...], int, str]]] = {
    "lambda": [("gpu_1x_a100_sxm4", 1.29, ("us-east-1", "us-west-2"), 1, "A100 (40 GB SXM4)"),
               ("gpu_8x_a100_80gb_sxm4", 14.32, ("us-east-1",), 8, "A100 (80 GB SXM4)")],
    "runpod": [("NVIDIA A100 80GB PCIe", 1.64, ("US-TX-3",), 1, "A100 PCIe (80 GB)")],
    "vastai": [("A100_SXM4", 1.05, ("Texas, US",), 1, "A100 SXM4 (80 GB)")],
    "novita": [],  # its profile's "A100 PCIe 80GB" sells; "A100 SXM 80GB" is sold out
}


@pytest.fixture
def emulated() -> Iterator[tuple[Catalog, dict[str, EmulatorServer]]]:
    clock = FakeClock()
    servers: dict[str, EmulatorServer] = {}
    adapters: dict[str, Any] = {}
    try:
        for name, profile in PROFILES.items():
            extra = [InstanceTypeOffer(name, *row) for row in A100_ROWS[name]]
            cloud = SimulatedCloud(name, clock=clock, seed=5,
                                   instance_types=[*profile.offers, *extra])
            servers[name] = EmulatorServer(DIALECT[name](cloud), api_key=KEY).start()
            adapters[name] = ADAPTER[name](
                SecretStr(KEY), base_url=servers[name].url, clock=clock, rate_limits={},
                retry=RetryPolicy(attempts=2, initial=0.01, max_backoff=0.05))
        yield Catalog(adapters, clock, ttl=60), servers
    finally:
        for adapter in adapters.values():
            adapter.close()
        for server in servers.values():
            server.stop()


def test_a100_offers_come_from_the_providers_that_sell_them(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, _ = emulated
    listing = catalog.offers()
    assert listing.failures == {}
    ranked = rank(listing.offers, Requirements(gpus=["A100"]))
    assert {o.provider for o in ranked} == {"lambda", "novita", "runpod", "vastai"}
    assert all(isinstance(o.gpu, GpuModel) and o.gpu.family == "A100" for o in ranked)
    assert all(o.available and o.count == 1 and not o.interruptible for o in ranked)
    assert [(o.provider, o.price_per_hour) for o in ranked] == [
        ("vastai", 1.05), ("lambda", 1.29), ("lambda", 1.29), ("novita", 1.4),
        ("novita", 1.4), ("runpod", 1.64)]
    assert [o.region for o in ranked if o.provider == "lambda"] == ["us-east-1", "us-west-2"]
    assert {o.gpu.name for o in ranked if isinstance(o.gpu, GpuModel)} == {
        "A100-40GB", "A100-80GB"}
    novita_a100 = [o for o in listing.offers if o.provider == "novita"
                   and o.instance_type == "A100 SXM 80GB"]
    assert novita_a100 and not any(o.available for o in novita_a100)
    reason = explain(novita_a100[0], Requirements(gpus=["A100"]))
    assert reason is not None and reason.startswith("sold out: novita")


def test_eight_gpus_compare_a_per_gpu_price_with_a_fixed_type(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, _ = emulated
    ranked = rank(catalog.offers().offers, Requirements(gpus=["A100-80GB"], count=8))
    assert [(o.provider, o.instance_type, o.price_per_hour) for o in ranked] == [
        ("novita", "A100 PCIe 80GB", round(1.40 * 8, 6)),
        ("novita", "A100 PCIe 80GB", round(1.40 * 8, 6)),
        ("runpod", "NVIDIA A100 80GB PCIe", round(1.64 * 8, 6)),
        ("lambda", "gpu_8x_a100_80gb_sxm4", 14.32)]


def test_spot_offers_only_when_allowed(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, _ = emulated
    ranked = rank(catalog.offers().offers, Requirements(gpus=["A100"], interruptible=True))
    assert ranked[0].interruptible and ranked[0].provider == "vastai"
    assert ranked[0].price_per_hour < 1.05


def test_h100_is_sold_by_all_four_emulators(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, _ = emulated
    ranked = rank(catalog.offers().offers, Requirements(gpus=["H100"], max_price_per_hour=3))
    assert {o.provider for o in ranked} == {"lambda", "novita", "runpod", "vastai"}
    prices = [o.price_per_hour for o in ranked]
    assert prices == sorted(prices) and max(prices) <= 3


def test_a_burst_of_placements_costs_one_catalog_call_per_provider(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, servers = emulated
    catalog.offers()
    after_first = {name: sum(s.counts.values()) for name, s in servers.items()}
    assert all(after_first.values())
    for _ in range(10):
        rank(catalog.offers().offers, Requirements(gpus=["A100"]))
    assert {name: sum(s.counts.values()) for name, s in servers.items()} == after_first


def test_a_provider_that_fails_leaves_the_others_answering(
        emulated: tuple[Catalog, dict[str, EmulatorServer]]) -> None:
    catalog, servers = emulated
    servers["runpod"].stop()  # connection refused from now on
    listing = catalog.offers()
    assert set(listing.failures) == {"runpod"}
    ranked = rank(listing.offers, Requirements(gpus=["A100"]))
    assert {o.provider for o in ranked} == {"lambda", "novita", "vastai"}
