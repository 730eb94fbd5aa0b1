"""Adapters by provider name, imported lazily so a missing optional piece costs nothing.

The names and classes are not written here: they are :data:`gpufsm.providers.PROVIDERS`,
the one list of providers; this module only turns a name into its class.
"""

from __future__ import annotations

import importlib
from typing import Any

from gpufsm.providers import PROVIDERS

__all__ = ["ADAPTERS", "adapter_class"]

#: provider name → "module:Class", derived from PROVIDERS (a dict, so a test may swap one
#: entry). Every class takes ``api_key`` first and the keyword arguments ``base_url``,
#: ``transport``, ``client``, ``timeout``, ``rate_limits``, ``retry``, ``clock`` and
#: ``settings``, so the CLI, the demo and the contract suite build them alike; a key or
#: URL not given is read from ``settings`` (or the environment), the same way for all.
ADAPTERS: dict[str, str] = {name: p.adapter for name, p in PROVIDERS.items()}


def adapter_class(name: str) -> Any:
    """The adapter class for ``name``; ValueError naming the known ones otherwise."""
    try:
        target = ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown provider {name!r}; known: {known}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
