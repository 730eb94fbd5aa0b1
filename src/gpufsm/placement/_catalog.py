"""Every provider's catalog, read at most once per provider per TTL.

Placement ranks offers from all providers for every request; asking each provider for
its catalog per request would make a burst of 100 placements 400 catalog calls (and run
into the providers' rate limits). ``Catalog`` keeps each provider's last answer for
``ttl`` seconds of the injected clock, and a per-provider lock makes concurrent callers
wait for the one call in flight rather than each sending their own.

A provider whose catalog call fails is *reported* (``Listing.failures``), not fatal: the
others still answer, and a placement goes ahead with what it has. The failure is kept
for ``failure_ttl`` (shorter), so a provider that is down costs one failed call per
``failure_ttl``, not one per placement, yet is asked again soon.

Errors are kept as text: provider errors never carry API keys (see ``gpufsm.errors``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpufsm.adapters import ProviderAdapter
from gpufsm.clock import Clock
from gpufsm.errors import ProviderError
from gpufsm.placement._offer import Offer, offers_from

__all__ = ["DEFAULT_FAILURE_TTL", "DEFAULT_TTL", "Catalog", "Listing"]

log = logging.getLogger("gpufsm.placement")

#: Seconds a provider's catalog is reused: long enough for a burst of placements, short
#: enough that capacity read a minute ago is not trusted.
DEFAULT_TTL = 60.0
#: Seconds a failed catalog call is remembered before the provider is asked again.
DEFAULT_FAILURE_TTL = 10.0


@dataclass(frozen=True, slots=True)
class Listing:
    """Offers from every provider that answered; ``failures`` says who did not, and why."""

    offers: tuple[Offer, ...]
    failures: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    offers: tuple[Offer, ...] = ()
    error: str | None = None


class Catalog:
    """A TTL cache of ``instance_types()`` over several adapters, normalised to offers."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter], clock: Clock, *,
                 ttl: float = DEFAULT_TTL, failure_ttl: float = DEFAULT_FAILURE_TTL) -> None:
        if ttl < 0 or failure_ttl < 0:
            raise ValueError("ttl and failure_ttl are seconds, >= 0")
        self._adapters = dict(adapters)
        self._clock = clock
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._entries: dict[str, _Entry] = {}
        self._locks = {name: threading.Lock() for name in self._adapters}

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    def offers(self, providers: Iterable[str] | None = None) -> Listing:
        """Every offer of ``providers`` (default: all), from cache where still fresh."""
        names = self._known(self.providers if providers is None else tuple(providers))
        offers: list[Offer] = []
        failures: dict[str, str] = {}
        for name in names:
            entry = self._entry(name)
            if entry.error is not None:
                failures[name] = entry.error
            offers.extend(entry.offers)
        return Listing(tuple(offers), MappingProxyType(failures))

    def invalidate(self, provider: str | None = None) -> None:
        """Forget one provider's catalog (or all), e.g. after a capacity refusal."""
        for name in self._known(self.providers if provider is None else (provider,)):
            with self._locks[name]:
                self._entries.pop(name, None)

    def _known(self, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in self._adapters]
        if unknown:
            raise ValueError(f"no adapter for {', '.join(unknown)}; "
                             f"known: {', '.join(self.providers)}")
        return names

    def _entry(self, name: str) -> _Entry:
        with self._locks[name]:
            entry = self._entries.get(name)
            if entry is None or not self._fresh(entry):
                entry = self._read(name)
                self._entries[name] = entry
            return entry

    def _fresh(self, entry: _Entry) -> bool:
        ttl = self._failure_ttl if entry.error is not None else self._ttl
        return self._clock.monotonic() - entry.at < ttl

    def _read(self, name: str) -> _Entry:
        """One catalog call (the adapter's seam holds its timeout and retries), aged from
        when it was sent, so the TTL never stretches by the call's own duration."""
        sent = self._clock.monotonic()
        try:
            types = self._adapters[name].instance_types()
            offers = tuple(o for t in types for o in offers_from(t, provider=name))
        except ProviderError as exc:
            log.warning("placement: %s catalog failed: %s", name, exc)
            return _Entry(sent, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in one adapter must not hide the others' offers
            log.exception("placement: %s catalog failed unexpectedly", name)
            return _Entry(sent, error=f"{type(exc).__name__}: {exc}")
        return _Entry(sent, offers)
