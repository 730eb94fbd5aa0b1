"""Adapters by provider name, imported lazily so a missing optional piece costs nothing."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ADAPTERS", "adapter_class"]

#: provider name → "module:Class". Every class takes ``api_key`` first and the keyword
#: arguments ``base_url``, ``transport``, ``client``, ``timeout``, ``rate_limits``,
#: ``retry``, ``clock`` and ``settings``, so the CLI, the demo and the contract suite
#: build them alike; a key or URL not given is read from ``settings`` (or the
#: environment), the same way for all of them.
ADAPTERS: dict[str, str] = {
    "lambda": "gpufsm.adapters.lambda_cloud:LambdaCloudAdapter",
    "novita": "gpufsm.adapters.novita:NovitaAdapter",
    "runpod": "gpufsm.adapters.runpod:RunPodAdapter",
    "vastai": "gpufsm.adapters.vastai:VastAdapter",
}


def adapter_class(name: str) -> Any:
    """The adapter class for ``name``; ValueError naming the known ones otherwise."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown provider {name!r}; known: {known}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
