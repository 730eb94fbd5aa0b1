"""Every provider gpufsm speaks to, one record each: the single list the rest derives from.

A provider's identity used to be written in about eight places (the adapter registry, its
``AdapterProfile``, the Settings fields, the CLI's key lookups, the emulator dialects and
profiles, the contract suite's pairs, the docs tests), so adding one meant finding them
all, and forgetting one failed somewhere far away. Now each place reads :data:`PROVIDERS`:

* ``gpufsm.adapters.ADAPTERS`` and ``adapter_class`` (``Provider.adapter``);
* each adapter's ``AdapterProfile`` (name, key variable and setting, URL setting,
  production URL);
* ``gpufsm.config.Settings`` (which variable each key field reads; a test fails when an
  entry has no matching fields);
* the CLI's provider list, key lookups and ``--provider`` check
  (``gpufsm.cli._providers.PROVIDER_SETTINGS``);
* ``gpufsm.testing.emulators.DIALECTS`` (``Provider.dialect``), and the emulator
  profiles, whose keys a test holds equal to these;
* the contract suite, the vocabulary walk and the docs tests, which parametrise over it.

This module is a leaf: it imports nothing from gpufsm, so adapters, config, the CLI and
the testing kit can all read it without an import cycle. Classes are named as
``"module:Class"`` strings and imported lazily by their readers, so listing a provider
costs nothing until it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PROVIDERS", "Provider"]


@dataclass(frozen=True, slots=True)
class Provider:
    """What gpufsm must know of a provider before importing any of its code."""

    name: str  # registry key, stored on every row and typed after --provider
    title: str  # how people write it; its section heading in docs/providers.md
    adapter: str  # "module:Class" of its ProviderAdapter
    dialect: str  # "module:Class" of its emulator Dialect, built as Class(cloud)
    key_env: str  # the provider's own variable for the API key, e.g. LAMBDA_API_KEY
    key_setting: str  # the gpufsm.config.Settings field that reads key_env
    url_setting: str  # the Settings field that overrides default_url (GPUFSM_<FIELD>)
    default_url: str  # production
    #: The launch options that ask for a spot/bid (interruptible) machine; empty: the
    #: provider sells none. Placement adds them when it tries an interruptible offer.
    spot_options: tuple[tuple[str, object], ...] = ()
    #: Whether a launch takes SSH key *names*. False: the provider installs the keys
    #: registered on the account itself (Vast, RunPod, Novita), so placement leaves a
    #: template's key names out there instead of refusing the offer.
    takes_ssh_key_names: bool = True


def _registry(*providers: Provider) -> Mapping[str, Provider]:
    """Name → record, in the order written, read-only; a name given twice is refused."""
    table = {p.name: p for p in providers}
    if len(table) != len(providers):
        raise ValueError("PROVIDERS names a provider twice")
    return MappingProxyType(table)


#: One record per provider, in name order. Adding a provider: its own modules (adapter,
#: emulator dialect, fixtures) and one record here; see CONTRIBUTING.md.
PROVIDERS: Mapping[str, Provider] = _registry(
    Provider("lambda", "Lambda Cloud",
             "gpufsm.adapters.lambda_cloud:LambdaCloudAdapter",
             "gpufsm.testing.emulators.lambda_cloud:LambdaDialect",
             "LAMBDA_API_KEY", "lambda_api_key", "lambda_base_url", "https://cloud.lambda.ai"),
    Provider("novita", "Novita",
             "gpufsm.adapters.novita:NovitaAdapter",
             "gpufsm.testing.emulators.novita:NovitaDialect",
             "NOVITA_API_KEY", "novita_api_key", "novita_base_url", "https://api.novita.ai",
             spot_options=(("billingMode", "spot"),), takes_ssh_key_names=False),
    Provider("runpod", "RunPod",
             "gpufsm.adapters.runpod:RunPodAdapter",
             "gpufsm.testing.emulators.runpod:RunPodDialect",
             "RUNPOD_API_KEY", "runpod_api_key", "runpod_base_url", "https://rest.runpod.io",
             spot_options=(("interruptible", True),), takes_ssh_key_names=False),
    Provider("vastai", "Vast.ai",
             "gpufsm.adapters.vastai:VastAdapter",
             "gpufsm.testing.emulators.vastai:VastDialect",
             "VAST_API_KEY", "vast_api_key", "vast_base_url", "https://console.vast.ai",
             spot_options=(("interruptible", True),), takes_ssh_key_names=False),
)
