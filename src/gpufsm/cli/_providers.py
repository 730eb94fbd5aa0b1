"""Build the configured provider adapters from Settings (keys and optional base URLs)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from gpufsm.adapters import ProviderAdapter, adapter_class
from gpufsm.config import Settings
from gpufsm.errors import ValidationError

__all__ = ["PROVIDER_SETTINGS", "build_adapters"]

log = logging.getLogger("gpufsm.cli")

#: provider → (API key setting, base URL setting, environment variable of the key)
PROVIDER_SETTINGS: dict[str, tuple[str, str, str]] = {
    "lambda": ("lambda_api_key", "lambda_base_url", "LAMBDA_API_KEY"),
    "novita": ("novita_api_key", "novita_base_url", "NOVITA_API_KEY"),
    "runpod": ("runpod_api_key", "runpod_base_url", "RUNPOD_API_KEY"),
    "vastai": ("vast_api_key", "vast_base_url", "VAST_API_KEY"),
}


def build_adapters(settings: Settings, only: Iterable[str] | None = None
                   ) -> list[ProviderAdapter]:
    """One adapter per provider whose API key is set (restricted to ``only`` if given).

    Raises ValidationError naming the variable when a requested provider has no key,
    or when none is configured at all.
    """
    wanted = list(only) if only else list(PROVIDER_SETTINGS)
    adapters: list[ProviderAdapter] = []
    for name in wanted:
        if name not in PROVIDER_SETTINGS:
            raise ValidationError("provider", f"unknown provider {name!r}; known: "
                                  f"{', '.join(sorted(PROVIDER_SETTINGS))}", value=name)
        key_field, url_field, env = PROVIDER_SETTINGS[name]
        key = getattr(settings, key_field)
        if key is None:
            if only:
                raise ValidationError(env, "not set: export it or put it in .env")
            continue
        kwargs: dict[str, Any] = {"timeout": settings.http_timeout}
        if (url := getattr(settings, url_field)) is not None:
            kwargs["base_url"] = url
        adapters.append(adapter_class(name)(key, **kwargs))
    if not adapters:
        raise ValidationError(
            "provider", "no provider configured: set one of "
            + ", ".join(env for _, _, env in PROVIDER_SETTINGS.values()))
    return adapters
