"""What each adapter's catalog says about price, place and spot, over its emulator.

Placement (issue 13) ranks these rows across providers, so each must be true of the
place it names: a Vast price is one region's cheapest ask (not another region's), a
RunPod type carries its spot price, a Novita product states how many GPUs its per-GPU
price may be multiplied to. And the emulators of ``gpufsm emulator`` sell what a
placement test needs: an A100 in two regions, and spot where the provider has spot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from gpufsm.adapters import InstanceTypeOffer, RetryPolicy, adapter_class
from gpufsm.cli._emulator import PROFILES
from gpufsm.placement import GpuModel, offers_from
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing._sim import REGION_PRICES
from gpufsm.testing.emulators import EmulatorServer, HttpFault, make_dialect

KEY = "catalog-key-91b2"


class Rig:
    def __init__(self, provider: str, offers: tuple[InstanceTypeOffer, ...]) -> None:
        self.clock = FakeClock()
        self.cloud = SimulatedCloud(provider, clock=self.clock, seed=1, instance_types=offers)
        self.server = EmulatorServer(make_dialect(provider, self.cloud), api_key=KEY).start()
        self.adapter: Any = adapter_class(provider)(
            SecretStr(KEY), base_url=self.server.url, clock=self.clock, rate_limits={},
            retry=RetryPolicy(attempts=2, initial=0.01, max_backoff=0.05))

    def close(self) -> None:
        self.adapter.close()
        self.server.stop()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def _rig(rigs: list[Rig], provider: str, *offers: InstanceTypeOffer) -> Rig:
    rig = Rig(provider, offers)
    rigs.append(rig)
    return rig


# ---- (a) Vast: one row per region, at that region's price --------------------------------


def test_vast_prices_each_region_at_its_own_cheapest_ask(rigs: list[Rig]) -> None:
    rig = _rig(rigs, "vastai", InstanceTypeOffer(
        "vastai", "A100_SXM4", 1.05, ("Texas, US", "Oregon, US"), 1, "A100 SXM4 (80 GB)",
        extra={REGION_PRICES: {"Texas, US": 1.05, "Oregon, US": 1.19}}))
    rows = {o.regions: o for o in rig.adapter.instance_types()}
    assert set(rows) == {("Texas, US",), ("Oregon, US",)}
    texas, oregon = rows[("Texas, US",)], rows[("Oregon, US",)]
    assert (texas.price_per_hour, oregon.price_per_hour) == (pytest.approx(1.05),
                                                              pytest.approx(1.19))
    assert texas.spot_price_per_hour == pytest.approx(0.42)
    assert oregon.spot_price_per_hour == pytest.approx(0.476)
    assert texas.offer_id != oregon.offer_id
    # Each id is that region's ask: accepting Oregon's lands in Oregon at Oregon's price.
    placed = offers_from(oregon)
    assert [(o.region, o.offer_id) for o in placed if not o.interruptible] == [
        ("Oregon, US", oregon.offer_id)]


def test_vast_keeps_the_cheapest_ask_of_each_region(rigs: list[Rig]) -> None:
    rig = _rig(rigs, "vastai",
               InstanceTypeOffer("vastai", "RTX_4090", 0.40, ("Texas, US", "Stockholm, SE"),
                                 1, "RTX 4090", extra={REGION_PRICES: {"Stockholm, SE": 0.52}}),
               InstanceTypeOffer("vastai", "1x_RTX_4090", 0.31, ("Texas, US",), 1, "RTX 4090"))
    rows = {o.regions: o for o in rig.adapter.instance_types()}
    assert {r: o.price_per_hour for r, o in rows.items()} == {
        ("Texas, US",): pytest.approx(0.31), ("Stockholm, SE",): pytest.approx(0.52)}
    assert rows[("Texas, US",)].extra["offers"] == 2


# ---- (b) RunPod: the spot price ---------------------------------------------------------


def test_runpod_offers_carry_the_spot_price(rigs: list[Rig]) -> None:
    rig = _rig(rigs, "runpod", InstanceTypeOffer(
        "runpod", "NVIDIA A100 80GB PCIe", 1.64, ("US-TX-3",), 1, "A100 PCIe (80 GB)",
        spot_price_per_hour=0.82))
    [offer] = rig.adapter.instance_types()
    assert offer.price_per_hour == pytest.approx(1.64)
    assert offer.spot_price_per_hour == pytest.approx(0.82)
    spot = [o for o in offers_from(offer) if o.interruptible and o.count == 1]
    assert [o.price_per_hour for o in spot] == [pytest.approx(0.82)]


def test_runpod_offers_survive_a_failing_spot_query(rigs: list[Rig]) -> None:
    rig = _rig(rigs, "runpod", InstanceTypeOffer(
        "runpod", "NVIDIA A40", 0.44, ("EU-RO-1",), 1, "A40 (48 GB)"))
    rig.server.inject(HttpFault("5xx", times=5, path_contains="/graphql"))
    [offer] = rig.adapter.instance_types()
    assert offer.price_per_hour == pytest.approx(0.44) and offer.regions == ("EU-RO-1",)
    assert offer.spot_price_per_hour is None


# ---- (c) Novita: the GPU range of a per-GPU price --------------------------------------


def test_novita_states_its_gpu_range(rigs: list[Rig]) -> None:
    rig = _rig(rigs, "novita", InstanceTypeOffer(
        "novita", "A100 PCIe 80GB", 1.40, ("us-ca-01",), 1, "A100"))
    [offer] = rig.adapter.instance_types()
    assert offer.extra["price_is_per_gpu"] is True
    assert (offer.extra["min_gpus"], offer.extra["max_gpus"]) == (1, 8)


# ---- what the emulators sell -----------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PROFILES))
def test_every_emulator_sells_an_a100_in_two_regions(rigs: list[Rig], provider: str) -> None:
    rig = _rig(rigs, provider, *PROFILES[provider].offers)
    offers = [o for t in rig.adapter.instance_types() for o in offers_from(t)]
    a100 = [o for o in offers if isinstance(o.gpu, GpuModel) and o.gpu.family == "A100"
            and o.available and not o.interruptible]
    assert len({o.region for o in a100}) >= 2
    assert len({o.price_per_hour for o in a100}) >= 2  # by region, type or GPU count
    spot = [o for o in offers if o.interruptible and o.available]
    assert bool(spot) == (provider != "lambda")  # Lambda sells no spot
    if provider == "vastai":  # the one API that prices a region on its own
        one_gpu = {o.region: o.price_per_hour for o in a100 if o.count == 1}
        assert len(set(one_gpu.values())) >= 2
