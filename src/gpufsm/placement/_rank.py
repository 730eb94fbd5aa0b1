"""Which offers meet the requirements, cheapest first, and why the others do not.

Pure: no I/O, no clock, so a ranking can be tested over any offer set and the failover
that walks it (issue 13, item 3) replays the same order. ``explain`` is the one place a
mismatch is decided; ``rank`` keeps exactly the offers it has nothing to say about, so
``gpufsm offers`` and the "no offer matched" error can never disagree with the ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gpufsm.placement._gpus import GpuModel
from gpufsm.placement._offer import Offer
from gpufsm.placement._requirements import Requirements

__all__ = ["explain", "rank"]


def rank(offers: Iterable[Offer], requirements: Requirements) -> list[Offer]:
    """The available offers that meet ``requirements``, cheapest first.

    Ties are broken by provider, type, region (then count, on-demand before spot), so
    the order is the same whatever order the catalogs answered in.
    """
    return sorted((o for o in offers if explain(o, requirements) is None),
                  key=lambda o: o.sort_key)


def explain(offer: Offer, requirements: Requirements) -> str | None:
    """Why ``offer`` does not meet ``requirements`` (every reason, ``; ``-joined), or
    None when it does."""
    reasons = [r for check in _CHECKS if (r := check(offer, requirements)) is not None]
    return "; ".join(reasons) or None


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:.4f}"


def _available(offer: Offer, _: Requirements) -> str | None:
    if offer.available:
        return None
    return f"sold out: {offer.provider} reports no capacity for {offer.instance_type}"


def _provider(offer: Offer, req: Requirements) -> str | None:
    if req.providers and offer.provider not in req.providers:
        return f"provider {offer.provider} is not among {', '.join(req.providers)}"
    if offer.provider in req.exclude_providers:
        return f"provider {offer.provider} is excluded"
    return None


def _region(offer: Offer, req: Requirements) -> str | None:
    if offer.region is None:
        return None  # only a sold-out offer has no region, and _available said so
    region = offer.region.casefold()
    if req.regions and region not in {r.casefold() for r in req.regions}:
        return f"region {offer.region} is not among {', '.join(req.regions)}"
    if region in {r.casefold() for r in req.exclude_regions}:
        return f"region {offer.region} is excluded"
    return None


def _gpu(offer: Offer, req: Requirements) -> str | None:
    if not isinstance(offer.gpu, GpuModel):
        if req.gpus or req.min_vram_gb is not None:
            return (f"GPU {offer.gpu.raw!r} is not one gpufsm knows, so it cannot be "
                    "checked against gpus/min_vram_gb")
        return None
    if req.gpus and offer.gpu not in req.models:
        return f"GPU {offer.gpu.name} is not {' or '.join(req.gpus)}"
    return None


def _count(offer: Offer, req: Requirements) -> str | None:
    if offer.count == req.count:
        return None
    return f"{offer.count} GPU(s), wanted {req.count}"


def _vram(offer: Offer, req: Requirements) -> str | None:
    want = req.min_vram_gb
    if want is None or not isinstance(offer.gpu, GpuModel):
        return None  # an unknown GPU is refused by _gpu already
    have = offer.vram_gb
    if have is None or have < want:
        return f"{have if have is not None else '?'} GB per GPU, wanted at least {want:g}"
    return None


def _price(offer: Offer, req: Requirements) -> str | None:
    cap = req.max_price_per_hour
    if cap is None or offer.price_per_hour <= cap:
        return None
    return f"{_usd(offer.price_per_hour)}/h is above the {_usd(cap)}/h cap"


def _interruptible(offer: Offer, req: Requirements) -> str | None:
    if offer.interruptible and not req.interruptible:
        return "interruptible (spot/bid) price; set interruptible to accept it"
    return None


#: Every rule an offer must pass, in the order a person reads the reasons.
_CHECKS: tuple[Callable[[Offer, Requirements], str | None], ...] = (
    _available, _provider, _region, _gpu, _count, _vram, _price, _interruptible,
)
