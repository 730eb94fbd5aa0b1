"""What every HTTP provider adapter shares: the account, never the dialect.

An adapter is two things. The *account*: an API key found the same way everywhere, one
:class:`~gpufsm.adapters.HttpSeam` built from the same constructor arguments, a client to
close, a repr that must never show the key. The *dialect*: raw statuses, error tables,
endpoints, request bodies, validation, pagination. The account part is written once,
here; the dialect is data in each provider's modules, interpreted once by
``gpufsm.adapters._dialect``, and only a provider's true quirks are code of its own.

* :class:`AdapterProfile` is the handful of per-provider facts the account part needs:
  the provider's ``gpufsm.providers.PROVIDERS`` record (registry name, production URL and
  the setting that overrides it, the key's variable and setting), then capabilities, the
  error mapper, default rate limits and retry policy. Each adapter declares one at the
  top of its class, so every default of a provider can be read in one place.
* :class:`HttpAdapter` is the base of the four adapters: the shared constructor
  (``api_key`` first, then ``base_url``, ``transport``, ``client``, ``timeout``,
  ``rate_limits``, ``retry``, ``clock``, ``settings``, as ``gpufsm.adapters.ADAPTERS``
  promises), ``close`` and the context manager, ``name``, ``capabilities``, ``seam``,
  ``_parse`` (a 2xx body we cannot read is an unknown outcome, never an empty answer),
  ``_call`` and ``_call_unless_absent`` (an operation of the subclass's ``endpoints``
  table; the latter answers None on the provider's own not-found) and ``_before_launch``
  (a read that fails before the launch is sent says so). A subclass adds the protocol's
  operations.
* Small functions: :func:`resolve_api_key`, :func:`resolve_base_url`, and ``scrub``
  (re-exported from ``_dialect``: our key out of provider text, applied before any text
  is cut short, so no part of a key can survive at a cut).

**Where an adapter sends its key** is decided once, here, for the library and the CLI
alike: the argument, else the configured setting (``GPUFSM_<P>_BASE_URL``, from the
environment or ``.env``), else production. An embedder who points the CLI at an emulator
with that variable gets the same URL from ``LambdaCloudAdapter()`` in Python, so a test
key never goes to production by surprise (issue 9).
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypedDict, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from gpufsm.adapters._dialect import MASK, Endpoint, parse_model, scrub
from gpufsm.adapters._http import HttpSeam, RateLimit, RetryPolicy
from gpufsm.clock import Clock, SystemClock
from gpufsm.config import Settings
from gpufsm.errors import (
    ProviderError,
    ProviderNotFound,
    TemporaryProviderError,
    ValidationError,
)
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.providers import Provider

__all__ = [
    "MASK",
    "AdapterProfile",
    "HttpAdapter",
    "HttpAdapterOptions",
    "KeyedErrorMapper",
    "resolve_api_key",
    "resolve_base_url",
    "scrub",
]

_M = TypeVar("_M", bound=BaseModel)


class KeyedErrorMapper(Protocol):
    """A provider's error dialect: its error for a non-2xx answer, or None to let the seam
    map by HTTP status. Provider text it keeps has ``secret`` masked (:func:`scrub`)."""

    def __call__(self, response: httpx.Response, provider: str, *,
                 secret: SecretStr | None = None) -> ProviderError | None: ...


@dataclass(frozen=True, slots=True)
class AdapterProfile:
    """The per-provider facts behind the shared constructor, declared once per adapter.

    Who the provider is (name, key variable and setting, URL setting, production URL) is
    its ``gpufsm.providers.PROVIDERS`` record, read here, never restated; the rest is how
    this adapter talks to it.
    """

    provider: Provider
    capabilities: Capabilities
    #: Raw status word → state: the table its docs page prints (tests hold them equal).
    statuses: Mapping[str, InstanceState]
    error_mapper: KeyedErrorMapper
    rate_limits: Mapping[str, RateLimit]  # used when the caller passes none
    retry: RetryPolicy | None = None  # None: the seam's own default policy
    # Whether close() also closes a client the caller passed in. The seam takes such a
    # client over (base_url, timeout and the key's header are set on it), so either
    # choice is defensible; each adapter keeps the one its users already rely on.
    closes_given_client: bool = False

    def __post_init__(self) -> None:
        # At import, not at the first launch: a key read from a missing field could only
        # fail later, and a key read from the wrong field would go to the wrong provider.
        for setting in (self.provider.key_setting, self.provider.url_setting):
            if setting not in Settings.model_fields:
                raise ValueError(f"gpufsm.config.Settings has no field {setting!r} "
                                 f"(PROVIDERS[{self.provider.name!r}])")

    @property
    def name(self) -> str:
        """Registry key, stored on every row: "lambda", "vastai" …"""
        return self.provider.name

    @property
    def base_url(self) -> str:
        """Production; ``base_url=`` points an adapter at an emulator or a proxy."""
        return self.provider.default_url

    @property
    def api_key_env(self) -> str:
        """The variable a missing key's error names, e.g. ``LAMBDA_API_KEY``."""
        return self.provider.key_env

    @property
    def api_key_setting(self) -> str:
        """The ``gpufsm.config.Settings`` field that reads :attr:`api_key_env`."""
        return self.provider.key_setting

    @property
    def base_url_setting(self) -> str:
        """The ``gpufsm.config.Settings`` field that overrides :attr:`base_url`."""
        return self.provider.url_setting

    @property
    def base_url_env(self) -> str:
        """The variable that sets the base URL, e.g. ``GPUFSM_LAMBDA_BASE_URL``."""
        prefix = Settings.model_config.get("env_prefix") or ""
        return f"{prefix}{self.base_url_setting}".upper()


class HttpAdapterOptions(TypedDict, total=False):
    """The keyword arguments of :class:`HttpAdapter`, for subclasses that add their own."""

    base_url: str | None
    transport: httpx.BaseTransport | None
    client: httpx.Client | None
    timeout: float
    rate_limits: Mapping[str, RateLimit] | None
    retry: RetryPolicy | None
    clock: Clock | None
    settings: Settings | None
    rng: random.Random | None


class HttpAdapter:
    """One provider account over HTTP: key, seam, lifecycle. The dialect is the subclass's.

    ``api_key`` and ``base_url`` None mean "as configured": read from ``settings`` (a
    fresh ``Settings()`` — environment and ``.env`` — when none is given), and for the
    URL, production (``profile.base_url``) when nothing is configured. The key lives in
    the seam's headers and as a ``SecretStr`` here, so neither ``repr`` nor ``vars`` of an
    adapter can show it.
    """

    profile: ClassVar[AdapterProfile]
    #: The provider's operations: op name → method, path and whether it may be retried.
    endpoints: ClassVar[Mapping[str, Endpoint]]

    def __init__(
        self,
        api_key: SecretStr | str | None = None,
        *,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
        rate_limits: Mapping[str, RateLimit] | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        profile = self.profile
        if settings is None and (api_key is None or base_url is None):
            settings = Settings()
        self._api_key = resolve_api_key(api_key, env=profile.api_key_env,
                                        setting=profile.api_key_setting, settings=settings)
        self._base_url = resolve_base_url(base_url, profile, settings)
        self._clock: Clock = clock or SystemClock()
        self._owns_client = client is None or profile.closes_given_client
        self._seam = HttpSeam(
            provider=profile.name,
            base_url=self._base_url,
            api_key=self._api_key,
            error_mapper=self._map_error,  # a method: the mapper gets the key to mask
            client=client,
            transport=transport,
            timeout=timeout,
            rate_limits=profile.rate_limits if rate_limits is None else rate_limits,
            retry=profile.retry if retry is None else retry,
            clock=self._clock,
            rng=rng,  # retry jitter: seeded, a run replays exactly (the demo, tests)
        )

    def _map_error(self, response: httpx.Response, provider: str) -> ProviderError | None:
        return self.profile.error_mapper(response, provider, secret=self._api_key)

    def __repr__(self) -> str:  # the key is in the seam's headers, never in the repr
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this adapter owns it (see ``closes_given_client``)."""
        if self._owns_client:
            self._seam.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def capabilities(self) -> Capabilities:
        return self.profile.capabilities

    @property
    def seam(self) -> HttpSeam:
        """The HTTP seam, for its call count and breaker (tests, metrics)."""
        return self._seam

    @contextmanager
    def _before_launch(self) -> Iterator[None]:
        """Reads made before the launch request is sent (a price, an offer, a product).

        Their temporary failures are marked ``not_sent``: the launch itself never left,
        so the engine may record "nothing was created" instead of an unknown outcome
        that keeps a row CREATING and billable while it searches for a machine that
        cannot exist.
        """
        try:
            yield
        except TemporaryProviderError as exc:
            exc.not_sent = True
            raise

    def _parse(self, response: httpx.Response, model: type[_M], op: str) -> _M:
        """A 2xx body as ``model``; one we cannot read is ProviderUnavailable naming the
        field, never an empty answer (see :func:`~gpufsm.adapters._dialect.parse_model`)."""
        return parse_model(model, response.content, op=op, provider=self.profile.name,
                           status=response.status_code)

    def _call(self, op: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              attempts: int | None = None, **path: str | int) -> httpx.Response:
        """Call the endpoint ``self.endpoints[op]`` (``path`` fills its placeholders; an
        ``id`` is quoted) through the seam."""
        endpoint = self.endpoints[op]
        if "id" in path:
            path["id"] = urllib.parse.quote(str(path["id"]), safe="")
        return self._seam.request(endpoint.method, endpoint.path.format(**path), op=op,
                                  idempotent=endpoint.idempotent, json=json, params=params,
                                  attempts=attempts)

    def _call_unless_absent(self, op: str, **kw: Any) -> httpx.Response | None:
        """:meth:`_call`, answering None when the provider confirms the instance absent
        (its own not-found envelope: a ``get`` of it is None, a ``terminate`` is done)."""
        try:
            return self._call(op, **kw)
        except ProviderNotFound:
            return None


def resolve_api_key(api_key: SecretStr | str | None, *, env: str, setting: str,
                    settings: Settings | None = None) -> SecretStr:
    """The key given, else the one configured (``settings``, else environment or ``.env``).

    Missing, empty or blank is refused here, naming the variable to set: such a key could
    only come back as a 401 after the engine had committed a launch row.
    """
    if api_key is None:
        api_key = getattr(settings if settings is not None else Settings(), setting)
    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is None or not api_key.get_secret_value().strip():
        raise ValidationError(env, "not set: export it or put it in .env")
    return api_key


def resolve_base_url(base_url: str | None, profile: AdapterProfile,
                     settings: Settings | None = None) -> str:
    """The URL given, else the configured ``profile.base_url_setting``, else production.

    The same order as the key (:func:`resolve_api_key`), so the key and the URL always
    come from the same place: a key meant for an emulator is never sent to production.
    """
    source = "base_url"
    if base_url is None:
        configured = getattr(settings if settings is not None else Settings(),
                             profile.base_url_setting)
        source = profile.base_url_env
        base_url = configured.strip() if configured and configured.strip() else profile.base_url
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValidationError(source, "must be an http:// or https:// URL", value=url)
    return url

