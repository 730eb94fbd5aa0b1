"""Loopback HTTP emulators of each provider's API, backed by a SimulatedCloud."""

from __future__ import annotations

import importlib
from typing import Any

from gpufsm.providers import PROVIDERS
from gpufsm.testing.emulators._admin import EmulatorAdmin, enable_admin
from gpufsm.testing.emulators._server import (
    Dialect,
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)

__all__ = [
    "DIALECTS",
    "Dialect",
    "EmulatorAdmin",
    "EmulatorRequest",
    "EmulatorResponse",
    "EmulatorServer",
    "HttpFault",
    "dialect_class",
    "enable_admin",
    "make_dialect",
]

#: provider name → "module:Class", derived from ``gpufsm.providers.PROVIDERS`` (a dict, so
#: a test may swap one entry); each class is built as ``Class(cloud)``.
DIALECTS: dict[str, str] = {name: p.dialect for name, p in PROVIDERS.items()}


def dialect_class(name: str) -> Any:
    """The dialect class for provider ``name`` (imported on first use).

    Each class also carries what its emulator sells, so adding a provider touches only
    its own module: ``catalog`` (the ``InstanceTypeOffer`` rows in the provider's words)
    and ``id_prefix`` (the simulated cloud's instance-id prefix, None for the default).
    """
    try:
        target = DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(DIALECTS))
        raise ValueError(f"unknown dialect {name!r}; known: {known}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_dialect(name: str, cloud: Any) -> Dialect:
    """The dialect for provider ``name`` over ``cloud`` (a SimulatedCloud)."""
    dialect: Dialect = dialect_class(name)(cloud)
    return dialect
