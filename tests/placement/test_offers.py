"""``offers_from``: each provider's catalog entry as the rows placement ranks."""

from __future__ import annotations

from gpufsm.adapters import InstanceTypeOffer
from gpufsm.placement import GpuModel, Offer, UnknownGpu, offers_from


def _model(offer: Offer) -> str:
    assert isinstance(offer.gpu, GpuModel)
    return offer.gpu.name


def test_a_type_gives_one_offer_per_region_with_capacity() -> None:
    t = InstanceTypeOffer("lambda", "gpu_1x_a100_sxm4", 1.29, ("us-east-1", "us-west-1"), 1,
                          "A100 (40 GB SXM4)")
    offers = offers_from(t)
    assert [(o.region, o.available, o.count, o.price_per_hour) for o in offers] == [
        ("us-east-1", True, 1, 1.29), ("us-west-1", True, 1, 1.29)]
    assert {_model(o) for o in offers} == {"A100-40GB"}
    assert {(o.vram_gb, o.gpu_raw, o.interruptible) for o in offers} == {
        (40, "A100 (40 GB SXM4)", False)}


def test_a_sold_out_type_is_one_unavailable_offer_without_region() -> None:
    t = InstanceTypeOffer("lambda", "gpu_8x_h100_sxm5", 23.92, (), 8, "H100 (80 GB SXM5)")
    [offer] = offers_from(t)
    assert (offer.available, offer.region, offer.count, _model(offer)) == (
        False, None, 8, "H100-80GB")


def test_a_spot_price_adds_interruptible_offers() -> None:
    t = InstanceTypeOffer("vastai", "A100 SXM4", 1.10, ("Texas, US", "Quebec, CA"), 2,
                          "2x A100 SXM4 (80 GB)", offer_id="9000101", spot_price_per_hour=0.44)
    offers = offers_from(t)
    assert sorted((o.interruptible, o.region, o.price_per_hour) for o in offers) == [
        (False, "Quebec, CA", 1.10), (False, "Texas, US", 1.10),
        (True, "Quebec, CA", 0.44), (True, "Texas, US", 0.44)]
    assert {(o.count, _model(o), o.offer_id) for o in offers} == {(2, "A100-80GB", "9000101")}


def test_a_marketplace_ask_id_is_kept_only_where_it_names_the_region() -> None:
    """A Vast ask is one machine in one place; the adapter lists the cheapest ask of a
    GPU with every region that has one, so its id cannot be given to the other regions."""
    one = InstanceTypeOffer("vastai", "RTX 4090", 0.35, ("Texas, US",), 1, "1x RTX 4090",
                            offer_id="9000000", extra={"machine_id": 40000})
    two = InstanceTypeOffer("vastai", "RTX 4090", 0.35, ("Texas, US", "Stockholm, SE"), 1,
                            "1x RTX 4090", offer_id="9000000", extra={"machine_id": 40000})
    product = InstanceTypeOffer("novita", "RTX 4090 24GB", 0.35, ("us-ca-01", "eu-de-01"),
                                1, "RTX 4090 24GB", offer_id="prod-1")
    assert {o.offer_id for o in offers_from(one)} == {"9000000"}
    assert {o.offer_id for o in offers_from(two)} == {None}
    assert {o.offer_id for o in offers_from(product)} == {"prod-1"}


def test_a_zero_spot_price_is_no_spot_offer() -> None:
    t = InstanceTypeOffer("novita", "RTX 4090 24GB", 0.35, ("us-ca-01",), 1, "RTX 4090 24GB",
                          spot_price_per_hour=0.0)
    assert not any(o.interruptible for o in offers_from(t))


def test_a_per_gpu_price_is_multiplied_for_each_count() -> None:
    """Novita: a product is one GPU; gpuNum 1..8 multiplies the price."""
    t = InstanceTypeOffer("novita", "H100 SXM 80GB", 2.56, ("us-ca-01",), 1, "H100 SXM 80GB",
                          offer_id="prod-1", spot_price_per_hour=1.28,
                          extra={"price_is_per_gpu": True, "max_gpus": 8})
    on_demand = [o for o in offers_from(t) if not o.interruptible]
    assert [(o.count, o.price_per_hour) for o in on_demand] == [
        (n, round(2.56 * n, 6)) for n in range(1, 9)]
    spot = [o for o in offers_from(t) if o.interruptible]
    assert [(o.count, o.price_per_hour) for o in spot][-1] == (8, 10.24)


def test_a_per_gpu_price_without_a_stated_limit_is_one_gpu() -> None:
    t = InstanceTypeOffer("novita", "H100 SXM 80GB", 2.56, ("us-ca-01",), 1,
                          extra={"price_is_per_gpu": True})
    assert [o.count for o in offers_from(t)] == [1]


def test_runpod_max_count_bounds_the_counts() -> None:
    t = InstanceTypeOffer("runpod", "NVIDIA A40", 0.44, ("EU-RO-1",), 1, "A40 (48 GB)",
                          extra={"max_count": {"secure": 4, "community": 2}})
    assert [o.count for o in offers_from(t)] == [1, 2, 3, 4]
    assert {_model(o) for o in offers_from(t)} == {"A40"}


def test_an_unknown_gpu_keeps_the_providers_words() -> None:
    t = InstanceTypeOffer("vastai", "Imaginary RTX 9999", 0.5, ("US",), 2,
                          "2x Imaginary RTX 9999 (24 GB)")
    [offer] = offers_from(t)
    assert offer.gpu == UnknownGpu("2x Imaginary RTX 9999 (24 GB)")
    assert offer.gpu_raw == "2x Imaginary RTX 9999 (24 GB)" and offer.vram_gb == 24


def test_the_registry_key_overrides_the_offers_provider() -> None:
    t = InstanceTypeOffer("sim", "gpu_1x_a10", 0.75, ("us-east-1",), 1, "A10 (24 GB)")
    assert {o.provider for o in offers_from(t, provider="lambda")} == {"lambda"}
    assert {o.provider for o in offers_from(t)} == {"sim"}
