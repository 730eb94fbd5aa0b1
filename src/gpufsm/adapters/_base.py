"""What every HTTP provider adapter shares: the account, never the dialect.

An adapter is two things. The *account*: an API key found the same way everywhere, one
:class:`~gpufsm.adapters.HttpSeam` built from the same constructor arguments, a client to
close, a repr that must never show the key. The *dialect*: raw statuses, error tables,
request bodies, validation, pagination. The account part is written once, here; every
dialect decision stays in the provider's own module, where its reasons are written down.

* :class:`AdapterProfile` is the handful of per-provider facts the account part needs
  (registry name, production URL, the key's variable, capabilities, the error mapper,
  default rate limits and retry policy). Each adapter declares one at the top of its
  class, so every default of a provider can be read in one place.
* :class:`HttpAdapter` is the base of the four adapters: the shared constructor
  (``api_key`` first, then ``base_url``, ``transport``, ``client``, ``timeout``,
  ``rate_limits``, ``retry``, ``clock``, as ``gpufsm.adapters.ADAPTERS`` promises),
  ``close`` and the context manager, ``name``, ``capabilities``, ``seam``, and ``_parse``
  (a 2xx body we cannot read is an unknown outcome, never an empty answer). A subclass
  adds the protocol's operations, which is where the provider's dialect lives.
* Small functions the dialects call: :func:`resolve_api_key` and :func:`scrub` (our key
  out of provider text, which every error mapper applies before it cuts text short, so
  no part of a key can survive at a cut).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self, TypedDict, TypeVar

import httpx
import pydantic
from pydantic import AliasChoices, BaseModel, SecretStr

from gpufsm.adapters._http import HttpSeam, RateLimit, RetryPolicy
from gpufsm.clock import Clock
from gpufsm.config import Settings
from gpufsm.errors import ProviderError, ProviderUnavailable, ValidationError
from gpufsm.machines import Capabilities

__all__ = [
    "MASK",
    "AdapterProfile",
    "HttpAdapter",
    "HttpAdapterOptions",
    "KeyedErrorMapper",
    "resolve_api_key",
    "scrub",
]

#: What our key becomes in any provider text we keep (the same mask ``SecretStr`` shows).
MASK = "**********"

_M = TypeVar("_M", bound=BaseModel)


class KeyedErrorMapper(Protocol):
    """A provider's error dialect: its error for a non-2xx answer, or None to let the seam
    map by HTTP status. Provider text it keeps has ``secret`` masked (:func:`scrub`)."""

    def __call__(self, response: httpx.Response, provider: str, *,
                 secret: SecretStr | None = None) -> ProviderError | None: ...


@dataclass(frozen=True, slots=True)
class AdapterProfile:
    """The per-provider facts behind the shared constructor, declared once per adapter."""

    name: str  # registry key, stored on every row: "lambda", "vastai" …
    base_url: str  # production; ``base_url=`` points an adapter at an emulator or a proxy
    api_key_env: str  # the variable a missing key's error names, e.g. "LAMBDA_API_KEY"
    capabilities: Capabilities
    error_mapper: KeyedErrorMapper
    rate_limits: Mapping[str, RateLimit]  # used when the caller passes none
    retry: RetryPolicy | None = None  # None: the seam's own default policy
    # Whether close() also closes a client the caller passed in. The seam takes such a
    # client over (base_url, timeout and the key's header are set on it), so either
    # choice is defensible; each adapter keeps the one its users already rely on.
    closes_given_client: bool = False
    #: The ``gpufsm.config.Settings`` field that reads ``api_key_env`` (found, not typed:
    #: a key read from the wrong field would be sent to the wrong provider).
    api_key_setting: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_key_setting", _setting_for(self.api_key_env))


class HttpAdapterOptions(TypedDict, total=False):
    """The keyword arguments of :class:`HttpAdapter`, for subclasses that add their own."""

    base_url: str | None
    transport: httpx.BaseTransport | None
    client: httpx.Client | None
    timeout: float
    rate_limits: Mapping[str, RateLimit] | None
    retry: RetryPolicy | None
    clock: Clock | None


class HttpAdapter:
    """One provider account over HTTP: key, seam, lifecycle. The dialect is the subclass's.

    ``base_url`` None means the provider's production URL (``profile.base_url``). The
    key lives in the seam's headers and as a ``SecretStr`` here, so neither ``repr`` nor
    ``vars`` of an adapter can show it.
    """

    profile: ClassVar[AdapterProfile]

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
    ) -> None:
        profile = self.profile
        self._api_key = resolve_api_key(api_key, env=profile.api_key_env,
                                        setting=profile.api_key_setting)
        self._base_url = (profile.base_url if base_url is None else base_url).rstrip("/")
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
            clock=clock,
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

    def _parse(self, response: httpx.Response, model: type[_M], op: str) -> _M:
        """A 2xx body as ``model``; one we cannot read is ProviderUnavailable, never empty.

        Temporary on purpose: the call may have done its work (a launch may have created
        a machine), so the outcome is unknown, and a listing we cannot read must never
        pass for "no instances".
        """
        try:
            return model.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0] if exc.error_count() else {"loc": (), "msg": "?"}
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ProviderUnavailable(
                f"{op}: unreadable {response.status_code} response ({where}: {first['msg']})",
                provider=self.profile.name, status_code=response.status_code,
            ) from exc


def _setting_for(env: str) -> str:
    """The Settings field whose aliases include ``env``; ValueError (at import) if none."""
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if (isinstance(alias, AliasChoices) and env in alias.choices) or alias == env:
            return name
    raise ValueError(f"gpufsm.config.Settings reads no variable {env!r}")


def resolve_api_key(api_key: SecretStr | str | None, *, env: str, setting: str) -> SecretStr:
    """The key given, else the one configured (environment or ``.env``).

    Missing, empty or blank is refused here, naming the variable to set: such a key could
    only come back as a 401 after the engine had committed a launch row.
    """
    if api_key is None:
        api_key = getattr(Settings(), setting)
    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is None or not api_key.get_secret_value().strip():
        raise ValidationError(env, "not set: export it or put it in .env")
    return api_key


def scrub(text: str, secret: SecretStr | str | None) -> str:
    """Provider text with our key masked, should a server ever echo it back."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return text.replace(value, MASK) if value else text
