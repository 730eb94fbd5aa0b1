"""``rank`` and ``explain``: matching available offers, cheapest first, and the reasons.

The properties hold over random offer sets and random requirements: rank keeps only
matching available offers, keeps every one of them, orders them by price with a fixed
tie-break, and does not depend on the order the catalogs answered in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufsm.placement import (
    FAMILIES,
    MODELS,
    Offer,
    Requirements,
    UnknownGpu,
    explain,
    rank,
)

PROVIDERS = ["lambda", "novita", "runpod", "vastai"]
REGIONS = ["us-east-1", "US-TX-3", "Texas, US", "eu-de-01"]


def offer(**kw: Any) -> Offer:
    model = kw.pop("gpu", MODELS[0])
    base: dict[str, Any] = {
        "provider": "lambda", "instance_type": "gpu_1x_a100", "region": "us-east-1",
        "gpu": model, "gpu_raw": str(model), "count": 1,
        "vram_gb": getattr(model, "vram_gb", None), "price_per_hour": 1.0}
    return Offer(**{**base, **kw})


@st.composite
def offers(draw: st.DrawFn) -> Offer:
    gpu = draw(st.sampled_from([*MODELS, UnknownGpu("Imaginary RTX 9999")]))
    available = draw(st.booleans())
    return Offer(
        provider=draw(st.sampled_from(PROVIDERS)),
        instance_type=draw(st.sampled_from(["t1", "t2", "t3"])),
        region=draw(st.sampled_from(REGIONS)) if available else None,
        gpu=gpu, gpu_raw=str(gpu), count=draw(st.integers(1, 8)),
        vram_gb=getattr(gpu, "vram_gb", None),
        # cents, so equal prices (ties) are common
        price_per_hour=draw(st.integers(1, 400)) / 100,
        interruptible=draw(st.booleans()), available=available,
        offer_id=draw(st.none() | st.sampled_from(["1", "2"])))


requirements = st.builds(
    Requirements,
    gpus=st.lists(st.sampled_from([*FAMILIES, *(m.name for m in MODELS)]), max_size=3),
    count=st.integers(1, 8),
    min_vram_gb=st.none() | st.sampled_from([16, 24, 48, 80]),
    max_price_per_hour=st.none() | st.integers(1, 400).map(lambda c: c / 100),
    providers=st.lists(st.sampled_from(PROVIDERS[:2]), max_size=2, unique=True),
    exclude_providers=st.lists(st.sampled_from(PROVIDERS[2:]), max_size=1),
    regions=st.lists(st.sampled_from(REGIONS[:2]), max_size=2, unique=True),
    exclude_regions=st.lists(st.sampled_from(REGIONS[2:]), max_size=1),
    interruptible=st.booleans(),
)


@given(st.lists(offers(), max_size=30), requirements)
def test_rank_keeps_only_and_all_matching_available_offers(
        catalog: list[Offer], req: Requirements) -> None:
    ranked = rank(catalog, req)
    assert all(o.available and explain(o, req) is None for o in ranked)
    matching = [o for o in catalog if explain(o, req) is None]
    assert Counter(ranked) == Counter(matching)  # none dropped, none invented


@given(st.lists(offers(), max_size=30), requirements)
def test_rank_is_cheapest_first_with_a_fixed_tie_break(
        catalog: list[Offer], req: Requirements) -> None:
    ranked = rank(catalog, req)
    prices = [o.price_per_hour for o in ranked]
    assert prices == sorted(prices)
    keys = [(o.price_per_hour, o.provider, o.instance_type, o.region or "") for o in ranked]
    assert keys == sorted(keys)


@given(st.lists(offers(), max_size=20), requirements, st.randoms())
def test_rank_does_not_depend_on_the_order_catalogs_answered(
        catalog: list[Offer], req: Requirements, rnd: Any) -> None:
    shuffled = list(catalog)
    rnd.shuffle(shuffled)
    assert rank(shuffled, req) == rank(catalog, req)


@given(st.lists(offers(), max_size=30))
def test_an_offer_matching_requirements_also_matches_looser_ones(catalog: list[Offer]) -> None:
    """Dropping every constraint but count never loses an offer."""
    strict = Requirements(gpus=["A100"], max_price_per_hour=2, providers=["lambda"])
    loose = Requirements(interruptible=True)
    assert set(rank(catalog, strict)) <= set(rank(catalog, loose))


def test_a_known_example() -> None:
    a100 = FAMILIES["A100"]
    cheap_80 = offer(gpu=a100[1], price_per_hour=1.5, provider="runpod", region="US-TX-3")
    cheap_40 = offer(gpu=a100[0], price_per_hour=1.5, provider="lambda")
    dear = offer(gpu=a100[0], price_per_hour=2.5, provider="vastai", region="Texas, US")
    h100 = offer(gpu=FAMILIES["H100"][0], price_per_hour=0.5)
    sold_out = offer(gpu=a100[0], price_per_hour=0.1, region=None, available=False)
    ranked = rank([dear, h100, sold_out, cheap_80, cheap_40], Requirements(gpus=["A100"]))
    assert ranked == [cheap_40, cheap_80, dear]  # a price tie goes by provider name
    assert rank(ranked, Requirements(gpus=["A100-80GB"])) == [cheap_80]


@pytest.mark.parametrize(("kw", "req", "says"), [
    ({"available": False, "region": None}, {}, "sold out: lambda reports no capacity"),
    ({}, {"providers": ["vastai"]}, "provider lambda is not among vastai"),
    ({}, {"exclude_providers": ["lambda"]}, "provider lambda is excluded"),
    ({}, {"regions": ["eu-de-01"]}, "region us-east-1 is not among eu-de-01"),
    ({}, {"exclude_regions": ["US-EAST-1"]}, "region us-east-1 is excluded"),
    ({}, {"gpus": ["H100"]}, "GPU A100-40GB is not H100"),
    ({"gpu": UnknownGpu("Imaginary RTX 9999")}, {"gpus": ["H100"]},
     "GPU 'Imaginary RTX 9999' is not one gpufsm knows"),
    ({"count": 8}, {}, "8 GPU(s), wanted 1"),
    ({}, {"min_vram_gb": 48}, "40 GB per GPU, wanted at least 48"),
    ({"price_per_hour": 2.5}, {"max_price_per_hour": 2}, "$2.50/h is above the $2.00/h cap"),
    ({"interruptible": True}, {}, "interruptible (spot/bid) price; set interruptible"),
])
def test_explain_says_why(kw: dict[str, Any], req: dict[str, Any], says: str) -> None:
    reason = explain(offer(**kw), Requirements(**req))
    assert reason is not None and says in reason


def test_explain_lists_every_reason_and_none_for_a_match() -> None:
    o = offer(price_per_hour=9.0, count=2)
    reason = explain(o, Requirements(gpus=["H100"], max_price_per_hour=1))
    assert reason is not None and reason.count("; ") == 2
    assert explain(o, Requirements(gpus=["A100"], count=2)) is None


def test_an_unknown_gpu_matches_only_when_no_gpu_or_vram_is_asked() -> None:
    o = offer(gpu=UnknownGpu("Imaginary RTX 9999"))
    assert explain(o, Requirements()) is None
    assert explain(o, Requirements(min_vram_gb=8)) is not None
