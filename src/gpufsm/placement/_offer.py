"""One shape for every provider's catalog: the ``Offer`` placement ranks and tries.

Adapters report their catalogs as :class:`gpufsm.adapters.InstanceTypeOffer`, each in
its provider's own terms: Lambda a fixed-size type with the regions that have capacity,
Vast the cheapest ask per GPU name, count and region with its min bid, RunPod and Novita a price
*per GPU* that the launch's ``gpu_count`` multiplies. ``offers_from`` turns one of them
into the rows a ranking can compare without knowing any provider:

* one ``Offer`` per region with capacity now; a type with none gives one row with
  ``available=False`` and no region, so ``gpufsm offers`` can still show it as sold out;
* one more row per region at the spot/bid price where the provider states one
  (``interruptible=True``);
* for a per-GPU price, one row per GPU count the provider allows, priced for the whole
  machine, so a ranking compares 8 RunPod GPUs with Lambda's ``gpu_8x_…`` directly.

Prices on an ``Offer`` are always US$ per hour for the whole machine; ``vram_gb`` is per
GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpufsm.adapters import InstanceTypeOffer
from gpufsm.placement._gpus import Gpu, GpuModel, UnknownGpu, canonical, vram_hint

__all__ = ["Offer", "offers_from"]


@dataclass(frozen=True, slots=True)
class Offer:
    """A machine placement could launch: what it is, where, at what price."""

    provider: str
    instance_type: str
    region: str | None
    gpu: Gpu
    gpu_raw: str
    count: int
    vram_gb: float | None
    price_per_hour: float
    interruptible: bool = False
    available: bool = True
    offer_id: str | None = None

    @property
    def sort_key(self) -> tuple[float, str, str, str, int, bool]:
        """Cheapest first; ties broken by provider, type, region so the order never
        depends on which catalog answered first."""
        return (self.price_per_hour, self.provider, self.instance_type, self.region or "",
                self.count, self.interruptible)


def offers_from(type_offer: InstanceTypeOffer, *, provider: str | None = None) -> list[Offer]:
    """Every ``Offer`` in one catalog entry (see the module docstring).

    ``provider`` overrides ``type_offer.provider``: the registry key the catalog was read
    under is the one a launch must name.
    """
    gpu, raw = _gpu_of(type_offer)
    vram = gpu.vram_gb if isinstance(gpu, GpuModel) else vram_hint(type_offer.gpu_description)
    prices = [(False, type_offer.price_per_hour)]
    spot = type_offer.spot_price_per_hour
    if spot is not None and spot > 0:
        prices.append((True, spot))
    regions: tuple[str | None, ...] = type_offer.regions or (None,)
    return [
        Offer(provider=provider or type_offer.provider, instance_type=type_offer.name,
              region=region, gpu=gpu, gpu_raw=raw, count=count, vram_gb=vram,
              price_per_hour=round(price * times, 6), interruptible=interruptible,
              available=region is not None, offer_id=_offer_id(type_offer))
        for interruptible, price in prices
        for count, times in _counts(type_offer)
        for region in regions
    ]


def _gpu_of(type_offer: InstanceTypeOffer) -> tuple[Gpu, str]:
    """The canonical GPU, and the provider's own words for it (its GPU description, else
    the type name) for display.

    The type name is tried first (RunPod's and Vast's names *are* GPU names; Lambda's
    encode one), then the description; a VRAM figure in the description is the hint for
    names that do not state it (Vast's ``A100 SXM4`` with ``(80 GB)``).
    """
    raw = type_offer.gpu_description or type_offer.name
    hint = vram_hint(type_offer.gpu_description)
    for text in (type_offer.name, type_offer.gpu_description):
        model = canonical(type_offer.provider, text, vram_gb=hint) if text else None
        if model is not None:
            return model, raw
    return UnknownGpu(raw), raw


def _offer_id(type_offer: InstanceTypeOffer) -> str | None:
    """The provider's id for the row, or None where it could name the wrong region.

    A Novita product id holds in every region. A Vast ask is one machine (``machine_id``
    in ``extra``) in one place, but the adapter reports the cheapest ask of a GPU model
    with every region that has one, so with several regions the id would point a launch
    in region B at the machine in region A; Vast's launch searches by region anyway.
    """
    if type_offer.extra.get("machine_id") is not None and len(type_offer.regions) > 1:
        return None
    return type_offer.offer_id


def _counts(type_offer: InstanceTypeOffer) -> list[tuple[int, int]]:
    """(GPUs in the machine, what the listed price is multiplied by) for each choice."""
    gpus = type_offer.gpus if type_offer.gpus is not None else 1
    most = _per_gpu_max(type_offer) if gpus == 1 else None
    if most is None:
        return [(gpus, 1)]
    return [(n, n) for n in range(1, most + 1)]


def _per_gpu_max(type_offer: InstanceTypeOffer) -> int | None:
    """The most GPUs a per-GPU price may be multiplied to, or None for a fixed type.

    Read from what the adapters put in ``extra``: Novita's ``price_is_per_gpu`` with its
    ``max_gpus`` (gpuNum 1..8), RunPod's ``max_count`` (per cloud type; the largest
    counts). A per-GPU price without a stated limit is offered for one GPU only.
    """
    extra = type_offer.extra
    counts = extra.get("max_count")
    if isinstance(counts, Mapping):
        limits = [v for v in counts.values() if isinstance(v, int) and v >= 1]
        return max(limits) if limits else None
    if extra.get("price_is_per_gpu") is True:
        most = extra.get("max_gpus")
        return most if isinstance(most, int) and most >= 1 else 1
    return None
