"""Build the configured provider adapters from Settings (keys and optional base URLs).

Where each adapter finds its key and its URL is decided in one place, the adapter
itself (``gpufsm.adapters._base.HttpAdapter``): the CLI hands it the Settings and never
resolves a key or a URL on its own, so the CLI and a Python embedder cannot disagree on
where a key is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gpufsm.adapters import Closable, ProviderAdapter, adapter_class
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.providers import PROVIDERS

__all__ = ["PROVIDER_SETTINGS", "build_adapters"]

log = logging.getLogger("gpufsm.cli")

#: provider → (API key setting, base URL setting, environment variable of the key), in
#: name order, as ``gpufsm.providers.PROVIDERS`` (which each adapter's profile also reads)
#: declares them.
PROVIDER_SETTINGS: dict[str, tuple[str, str, str]] = {
    name: (PROVIDERS[name].key_setting, PROVIDERS[name].url_setting, PROVIDERS[name].key_env)
    for name in sorted(PROVIDERS)
}


def build_adapters(settings: Settings, only: Iterable[str] | None = None
                   ) -> list[ProviderAdapter]:
    """One adapter per provider whose API key is set (restricted to ``only`` if given).

    Raises ValidationError naming the variable when a requested provider has no key,
    or when none is configured at all.
    """
    wanted = list(only) if only else list(PROVIDER_SETTINGS)
    adapters: list[ProviderAdapter] = []
    try:
        _build(settings, wanted, adapters, by_name=bool(only))
    except BaseException:  # a later provider's key missing: close the clients made
        for adapter in adapters:
            if isinstance(adapter, Closable):
                adapter.close()
        raise
    if not adapters:
        raise ValidationError(
            "provider", "no provider configured: set one of "
            + ", ".join(env for _, _, env in PROVIDER_SETTINGS.values()))
    return adapters


def _build(settings: Settings, wanted: list[str], adapters: list[ProviderAdapter], *,
           by_name: bool) -> None:
    """Append one adapter per provider in ``wanted`` to ``adapters`` (see above)."""
    for name in wanted:
        if name not in PROVIDER_SETTINGS:
            raise ValidationError("provider", f"unknown provider {name!r}; known: "
                                  f"{', '.join(sorted(PROVIDER_SETTINGS))}", value=name)
        key_field = PROVIDER_SETTINGS[name][0]
        if getattr(settings, key_field) is None and not by_name:
            continue  # not configured, and not asked for by name
        # The adapter resolves key and base URL from these settings, as it would from
        # the environment in a Python program: a missing key asked for by name is its
        # ValidationError, naming the variable.
        adapters.append(adapter_class(name)(settings=settings,
                                            timeout=settings.http_timeout))
