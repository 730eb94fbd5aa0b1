"""Placement: ask for a GPU, not a provider (issue 13).

The pure groundwork: a person's ``Requirements``; every provider's catalog normalised to
one ``Offer`` shape (GPU names mapped to canonical models as data, in ``_gpus``); a
``Catalog`` that reads each provider at most once per TTL; and ``rank``/``explain``,
which order the matching offers cheapest first and say why the others do not match.
Launching by requirements (trying offers in order, with failover) builds on these.
"""

from gpufsm.placement._catalog import DEFAULT_FAILURE_TTL, DEFAULT_TTL, Catalog, Listing
from gpufsm.placement._gpus import (
    FAMILIES,
    MODELS,
    Gpu,
    GpuModel,
    UnknownGpu,
    canonical,
    identify,
    resolve_wanted,
)
from gpufsm.placement._offer import Offer, offers_from
from gpufsm.placement._rank import explain, rank
from gpufsm.placement._requirements import (
    GpuArg,
    Requirements,
    parse_gpu_arg,
    parse_requirements,
)

__all__ = [
    "DEFAULT_FAILURE_TTL",
    "DEFAULT_TTL",
    "FAMILIES",
    "MODELS",
    "Catalog",
    "Gpu",
    "GpuArg",
    "GpuModel",
    "Listing",
    "Offer",
    "Requirements",
    "UnknownGpu",
    "canonical",
    "explain",
    "identify",
    "offers_from",
    "parse_gpu_arg",
    "parse_requirements",
    "rank",
    "resolve_wanted",
]
