"""One provider registry (issue 12, item 3): ``gpufsm.providers.PROVIDERS`` is the only
list of providers; the adapter registry, the settings, the CLI, the emulator and the test
parametrisations are views of it, so adding a provider is its own modules plus one record.

Each test here fails when a view drifts from the registry, or when a record promises
something (a class, a Settings field, an emulator profile) that does not exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, SecretStr

import gpufsm.providers
from gpufsm.adapters import (
    ADAPTERS,
    Closable,
    HasSeam,
    ProviderAdapter,
    Renamable,
    adapter_class,
)
from gpufsm.cli._emulator import PROFILES, shell_exports
from gpufsm.cli._providers import PROVIDER_SETTINGS, build_adapters
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.providers import PROVIDERS, Provider
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import DIALECTS, make_dialect

NAMES = list(PROVIDERS)


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_gaps(provider: Provider) -> list[str]:
    """What ``Settings`` lacks for ``provider``: its key field (read under ``key_env``)
    and its base URL field."""
    fields = Settings.model_fields
    gaps = [f"no field {s!r}" for s in (provider.key_setting, provider.url_setting)
            if s not in fields]
    key = fields.get(provider.key_setting)
    if key is not None:
        alias = key.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        if provider.key_env not in choices:
            gaps.append(f"{provider.key_setting!r} does not read {provider.key_env}")
    return gaps


# ---- the registry itself -----------------------------------------------------------------


def test_the_registry_is_keyed_by_each_record_name() -> None:
    assert NAMES, "PROVIDERS is empty"
    assert all(name == p.name for name, p in PROVIDERS.items())
    assert sorted(NAMES) == NAMES, "keep PROVIDERS in name order (the CLI lists it so)"


def test_a_name_given_twice_is_refused() -> None:
    first = next(iter(PROVIDERS.values()))
    with pytest.raises(ValueError, match="twice"):
        gpufsm.providers._registry(first, first)


def test_the_registry_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        PROVIDERS["acme"] = next(iter(PROVIDERS.values()))


def test_the_registry_is_a_leaf() -> None:
    """Adapters, config, the CLI and the testing kit all import it: it imports none of
    gpufsm, or one of them would meet an import cycle."""
    tree = ast.parse(Path(gpufsm.providers.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported, "the walk found no import at all: the check is empty"
    assert not [m for m in imported if m.split(".")[0] == "gpufsm"]


@pytest.mark.parametrize("name", NAMES)
def test_each_record_is_complete(name: str) -> None:
    p = PROVIDERS[name]
    assert re.fullmatch(r"[a-z][a-z0-9]*", p.name)
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*_API_KEY", p.key_env)
    assert p.default_url.startswith("https://") and not p.default_url.endswith("/")
    assert p.title.strip() == p.title and p.title


# ---- the views ---------------------------------------------------------------------------


def test_adapters_dialects_and_cli_settings_are_views_of_the_registry() -> None:
    adapters = {n: p.adapter for n, p in PROVIDERS.items()}
    dialects = {n: p.dialect for n, p in PROVIDERS.items()}
    settings = {n: (p.key_setting, p.url_setting, p.key_env) for n, p in PROVIDERS.items()}
    assert (adapters, dialects, settings) == (ADAPTERS, DIALECTS, PROVIDER_SETTINGS)


def test_every_provider_has_an_emulator_profile_and_no_other_has_one() -> None:
    assert list(PROFILES) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_the_record_names_real_classes(name: str) -> None:
    p = PROVIDERS[name]
    adapter = _load(p.adapter)
    assert adapter is adapter_class(name)
    assert adapter.profile.provider is p, "the adapter's profile must read its record"
    assert adapter.profile.name == name
    dialect = make_dialect(name, SimulatedCloud(name, clock=FakeClock(), seed=1))
    assert type(dialect) is _load(p.dialect)
    assert all(callable(getattr(dialect, op, None)) for op in (
        "handle", "unauthorized", "rate_limited", "server_error", "provider_error"))


@pytest.mark.parametrize("name", NAMES)
def test_the_adapter_profile_restates_nothing(name: str) -> None:
    p = PROVIDERS[name]
    profile = adapter_class(name).profile
    assert (profile.base_url, profile.api_key_env, profile.api_key_setting,
            profile.base_url_setting) == (p.default_url, p.key_env, p.key_setting,
                                          p.url_setting)
    assert profile.base_url_env == f"GPUFSM_{p.url_setting.upper()}"


@pytest.mark.parametrize("name", NAMES)
def test_the_emulator_simulates_what_the_adapter_declares(name: str) -> None:
    assert PROFILES[name].capabilities == adapter_class(name).profile.capabilities
    assert {o.provider for o in PROFILES[name].offers} == {name}


# ---- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_provider_has_its_settings_fields(name: str) -> None:
    assert settings_gaps(PROVIDERS[name]) == []


def test_a_record_without_settings_fields_is_caught() -> None:
    """The check above can fail: a record for a provider Settings never heard of."""
    acme = Provider("acme", "Acme", "x:Y", "x:Z", "ACME_API_KEY", "acme_api_key",
                    "acme_base_url", "https://api.acme.example")
    assert settings_gaps(acme) == ["no field 'acme_api_key'", "no field 'acme_base_url'"]
    crossed = Provider("acme", "Acme", "x:Y", "x:Z", "ACME_API_KEY", "lambda_api_key",
                       "lambda_base_url", "https://api.acme.example")
    assert settings_gaps(crossed) == ["'lambda_api_key' does not read ACME_API_KEY"]


def test_every_key_and_url_setting_belongs_to_a_provider() -> None:
    """No orphan: a provider removed from the registry leaves no field behind."""
    fields = {f for f in Settings.model_fields if f.endswith(("_api_key", "_base_url"))}
    assert fields == {s for p in PROVIDERS.values() for s in (p.key_setting, p.url_setting)}


@pytest.mark.parametrize("name", NAMES)
def test_each_key_is_read_under_its_own_variable_and_ours(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    p = PROVIDERS[name]
    for other in PROVIDERS.values():
        monkeypatch.delenv(other.key_env, raising=False)
        monkeypatch.delenv(f"GPUFSM_{other.key_env}", raising=False)
    monkeypatch.setenv(p.key_env, "k-own")
    settings = Settings(_env_file=None)
    read = {o.name: getattr(settings, o.key_setting) for o in PROVIDERS.values()}
    assert isinstance(read[name], SecretStr) and read[name].get_secret_value() == "k-own"
    assert all(v is None for n, v in read.items() if n != name), "read by another provider"
    monkeypatch.delenv(p.key_env)
    monkeypatch.setenv(f"GPUFSM_{p.key_env}", "k-ours")
    key = getattr(Settings(_env_file=None), p.key_setting)
    assert key is not None and key.get_secret_value() == "k-ours"


# ---- the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_cli_builds_each_configured_provider(name: str) -> None:
    settings = Settings(_env_file=None, **{PROVIDERS[name].key_setting: "k"})
    (adapter,) = build_adapters(settings, [name])
    try:
        assert isinstance(adapter, ProviderAdapter) and adapter.name == name
    finally:
        assert isinstance(adapter, Closable)
        adapter.close()


def test_no_provider_configured_names_every_key_variable() -> None:
    empty = Settings(_env_file=None, **{p.key_setting: None
                                        for p in PROVIDERS.values()})
    with pytest.raises(ValidationError) as caught:
        build_adapters(empty)
    for p in PROVIDERS.values():
        assert p.key_env in str(caught.value)


@pytest.mark.parametrize("name", NAMES)
def test_the_emulator_banner_names_the_registry_variables(name: str) -> None:
    p = PROVIDERS[name]
    line = shell_exports(name, "http://127.0.0.1:9", key_checked=False)
    assert line == f"export GPUFSM_{p.url_setting.upper()}=http://127.0.0.1:9 {p.key_env}=" \
        "emulator-key"


# ---- what only some adapters do --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_optional_operations_are_protocols_not_getattr(name: str) -> None:
    """Every HTTP adapter closes and shows its seam; renaming is a protocol of its own,
    and an adapter has it exactly when it has a ``rename`` method."""
    cls = adapter_class(name)
    assert issubclass(cls, Closable)
    assert isinstance(getattr(cls, "seam", None), property)
    assert issubclass(cls, Renamable) == callable(getattr(cls, "rename", None))


@pytest.mark.parametrize("name", NAMES)
def test_built_adapters_have_a_seam(name: str) -> None:
    adapter = adapter_class(name)("k", base_url="http://127.0.0.1:9")
    try:
        assert isinstance(adapter, HasSeam) and adapter.seam.calls == 0
    finally:
        adapter.close()
