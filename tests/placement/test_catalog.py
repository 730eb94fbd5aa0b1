"""``Catalog``: one catalog call per provider per TTL, and a failing provider reported
while the others still answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpufsm import ProviderUnavailable
from gpufsm.adapters import InstanceTypeOffer
from gpufsm.placement import Catalog, Requirements, rank
from gpufsm.testing import FakeClock


class CountingAdapter:
    """Only what the catalog uses: a name and ``instance_types``, counted."""

    def __init__(self, name: str, types: Sequence[InstanceTypeOffer],
                 error: Exception | None = None) -> None:
        self.name = name
        self.types = list(types)
        self.error = error
        self.calls = 0
        self.gate: threading.Event | None = None  # when set, a call waits for it
        self._lock = threading.Lock()

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        with self._lock:
            self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(5), "the test never opened the gate"
        if self.error is not None:
            raise self.error
        return self.types


def lambda_adapter() -> CountingAdapter:
    return CountingAdapter("lambda", [
        InstanceTypeOffer("lambda", "gpu_1x_a100_sxm4", 1.29, ("us-east-1",), 1,
                          "A100 (40 GB SXM4)"),
        InstanceTypeOffer("lambda", "gpu_1x_a10", 0.75, ("us-east-1",), 1, "A10 (24 GB PCIe)"),
    ])


def runpod_adapter() -> CountingAdapter:
    return CountingAdapter("runpod", [
        InstanceTypeOffer("runpod", "NVIDIA A100 80GB PCIe", 1.19, ("US-TX-3",), 1,
                          "A100 PCIe (80 GB)"),
    ])


def test_one_call_per_provider_within_the_ttl_and_a_new_one_after() -> None:
    clock = FakeClock()
    la, rp = lambda_adapter(), runpod_adapter()
    catalog = Catalog({"lambda": la, "runpod": rp}, clock, ttl=60)
    first = catalog.offers()
    for _ in range(10):
        clock.advance(5.5)
        assert catalog.offers() == first
    assert (la.calls, rp.calls) == (1, 1)
    clock.advance(5)  # 60 s after the first call
    catalog.offers()
    assert (la.calls, rp.calls) == (2, 2)


def test_offers_are_normalised_and_keyed_by_the_registry_name() -> None:
    la = lambda_adapter()
    la.types = [InstanceTypeOffer("sim", "gpu_1x_a100_sxm4", 1.29, ("us-east-1",), 1,
                                  "A100 (40 GB SXM4)")]
    listing = Catalog({"lambda": la, "runpod": runpod_adapter()}, FakeClock()).offers()
    ranked = rank(listing.offers, Requirements(gpus=["A100"]))
    assert [(o.provider, o.instance_type) for o in ranked] == [
        ("runpod", "NVIDIA A100 80GB PCIe"), ("lambda", "gpu_1x_a100_sxm4")]
    assert listing.failures == {}


def test_a_failing_provider_is_reported_and_the_others_still_answer() -> None:
    clock = FakeClock()
    broken = CountingAdapter("vastai", [], error=ProviderUnavailable("503 from vast",
                                                                     provider="vastai"))
    la = lambda_adapter()
    catalog = Catalog({"lambda": la, "vastai": broken}, clock, ttl=60, failure_ttl=10)
    listing = catalog.offers()
    assert {o.provider for o in listing.offers} == {"lambda"}
    assert set(listing.failures) == {"vastai"}
    assert "ProviderUnavailable" in listing.failures["vastai"]
    clock.advance(9)
    catalog.offers()
    assert broken.calls == 1  # a provider that is down costs one call per failure_ttl
    clock.advance(1)
    broken.error = None
    listing = catalog.offers()
    assert broken.calls == 2 and listing.failures == {} and la.calls == 1


def test_an_unexpected_error_is_reported_too() -> None:
    odd = CountingAdapter("novita", [], error=KeyError("productId"))
    listing = Catalog({"novita": odd, "lambda": lambda_adapter()}, FakeClock()).offers()
    assert "KeyError" in listing.failures["novita"] and listing.offers


def test_a_burst_of_callers_waits_for_the_one_call_in_flight() -> None:
    la = lambda_adapter()
    la.gate = threading.Event()
    catalog = Catalog({"lambda": la}, FakeClock())
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(catalog.offers().offers)))
               for _ in range(20)]
    for t in threads:
        t.start()
    la.gate.set()
    for t in threads:
        t.join(5)
    assert la.calls == 1 and results == [2] * 20


def test_only_the_providers_asked_for_are_read() -> None:
    la, rp = lambda_adapter(), runpod_adapter()
    catalog = Catalog({"lambda": la, "runpod": rp}, FakeClock())
    assert {o.provider for o in catalog.offers(["runpod"]).offers} == {"runpod"}
    assert (la.calls, rp.calls) == (0, 1)
    with pytest.raises(ValueError, match="no adapter for acme"):
        catalog.offers(["acme"])


def test_invalidate_forgets_a_providers_catalog() -> None:
    la, rp = lambda_adapter(), runpod_adapter()
    catalog = Catalog({"lambda": la, "runpod": rp}, FakeClock())
    catalog.offers()
    catalog.invalidate("lambda")
    catalog.offers()
    assert (la.calls, rp.calls) == (2, 1)
    catalog.invalidate()
    catalog.offers()
    assert (la.calls, rp.calls) == (3, 2)
    with pytest.raises(ValueError, match="no adapter for acme"):
        catalog.invalidate("acme")


@given(st.lists(st.floats(0, 50, allow_nan=False), max_size=30), st.floats(1, 120))
def test_calls_are_one_per_ttl_window(steps: list[float], ttl: float) -> None:
    """Whatever the timing of the requests, the provider is asked exactly when its last
    answer is ``ttl`` old or older."""
    clock = FakeClock()
    la = lambda_adapter()
    catalog = Catalog({"lambda": la}, clock, ttl=ttl)
    expected, last = 0, None
    for step in [0.0, *steps]:
        clock.advance(step)
        now = clock.monotonic()
        if last is None or now - last >= ttl:
            expected, last = expected + 1, now
        catalog.offers()
        assert la.calls == expected
