"""What a stopped machine costs: the providers' storage prices, as data.

A STOPPED machine no longer bills for its GPU, but most providers keep its disk and
bill for that. The price is per GB and month and depends on how big the kept disk is,
so each entry names the launch option that sets that size and the provider's default
for it. A provider missing here has a storage price gpufsm does not know: its stopped
time counts as $0 and is marked as an estimate, never silently as free.

Only prices the provider publishes for every machine alike belong here. Vast.ai's
storage price is set by each host (the offer's own ``storage_cost``), which the row
does not keep, so Vast.ai is deliberately absent. Lambda Cloud cannot stop a machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HOURS_PER_MONTH", "STORAGE_PRICES", "StoragePrice", "storage_rate"]

#: A "month" of a per-GB-month price: 365 * 24 / 12 hours, the usual cloud convention.
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True, slots=True)
class StoragePrice:
    """A provider's price for the disk a stopped machine keeps."""

    usd_per_gb_month: float
    #: the launch option (``spec.options``) that sets the kept disk's size, in GB
    size_option: str
    #: the size the provider gives that disk when the option is not passed
    default_gb: int
    #: where the numbers come from, for the person who has to update them
    source: str


STORAGE_PRICES: Mapping[str, StoragePrice] = {
    "runpod": StoragePrice(
        usd_per_gb_month=0.20, size_option="volumeInGb", default_gb=20,
        source="docs.runpod.io/get-started/billing-information: stopped Pods are charged "
               "$0.20 per GB per month for volume storage (the container disk is not kept); "
               "volumeInGb defaults to 20 (PodCreateInput, openapi-rest-v1.json)"),
}


def storage_rate(provider: str, spec: Mapping[str, Any],
                 prices: Mapping[str, StoragePrice] = STORAGE_PRICES
                 ) -> tuple[float, str | None]:
    """The $/h a stopped machine of ``provider`` launched with ``spec`` costs, and why
    that figure is an estimate (None: it is the provider's published price).

    An adopted machine was not launched from our spec, so the size of its disk is not
    known: the provider's default is assumed, and said so.
    """
    price = prices.get(provider)
    if price is None:
        return 0.0, f"storage price unknown for {provider}: stopped time counted as $0"
    options = spec.get("options")
    size = options.get(price.size_option) if isinstance(options, Mapping) else None
    why = None
    if not isinstance(size, int | float) or isinstance(size, bool) or size < 0:
        size = price.default_gb
        if spec.get("adopted"):
            why = (f"adopted machine: its {provider} disk size is unknown, the default "
                   f"{price.default_gb} GB assumed")
    return float(size) * price.usd_per_gb_month / HOURS_PER_MONTH, why
