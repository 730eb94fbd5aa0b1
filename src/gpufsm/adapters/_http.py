"""The one HTTP seam every adapter uses: timeouts, rate limits, retries, a breaker, errors.

Everything an adapter would otherwise get subtly wrong on its own lives here once:

* an injected ``httpx.Client`` (tests pass a transport or point it at an emulator),
  with a timeout on every call;
* a token bucket per provider account, with per-operation buckets on top (Lambda allows
  about 1 request/s, and launch only 1 per 12 s);
* retries with jittered exponential backoff that honour ``Retry-After`` (tenacity), but
  only when a retry cannot double an action: a non-idempotent call (launch) is retried
  only after errors that prove the request was not processed (429, refused connection);
  a connection that cannot be made at all gets one quick retry, not the whole policy, so
  a wrong ``base_url`` or a service that is down fails in about a second;
* a circuit breaker per provider that opens after repeated failures and says so;
* transport exceptions and HTTP errors translated to the gpufsm error tree in exactly
  one place (``_translate``), with the provider's own mapper consulted first.

**One rule for "not found".** ``ProviderNotFound`` says *the provider confirms the object
is absent*, which lets ``get`` answer None and ``terminate`` report success: a row may end
on it. So only a provider's error mapper may produce it, and only after recognising that
provider's own not-found envelope. A 404 the mapper does not recognise (an HTML page from
a proxy, an empty body, a wrong ``base_url``) proves nothing about the instance: it is
ProviderUnavailable, an unknown outcome, naming the URL that answered it.

Errors the seam makes name the URL they tried (scheme, host, port and path: never the
query, which is where some clients put keys). The API key is sent as a bearer header
only, never in a URL (httpx logs URLs), and no error message is built from request
headers.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import tenacity
from pydantic import SecretStr

from gpufsm.adapters._limits import CircuitBreaker, RateLimit, RetryPolicy, TokenBucket
from gpufsm.clock import Clock, SystemClock
from gpufsm.errors import (
    AuthError,
    CircuitOpen,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    TemporaryProviderError,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "CallObserver",
    "CircuitBreaker",
    "ErrorMapper",
    "HttpSeam",
    "RateLimit",
    "RetryPolicy",
    "TokenBucket",
    "parse_retry_after",
    "redacted_url",
    "status_class",
]

log = logging.getLogger("gpufsm.http")

#: Provider-specific error mapping: return an error, or None to fall back on the status.
ErrorMapper = Callable[[httpx.Response, str], "ProviderError | None"]

#: Told of every HTTP attempt: (provider, op, outcome) where outcome is "ok" or the
#: gpufsm error class name. Metrics hang off this; it must not raise.
CallObserver = Callable[[str, str, str], None]


#: Seconds to wait for a TCP connection (capped at the call's timeout): a connect that
#: takes longer than this is a host that is down, and each retry would wait as long again.
CONNECT_TIMEOUT = 10.0


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))


def redacted_url(url: httpx.URL) -> str:
    """``url`` as errors may show it: no query, fragment or user info (keys live there)."""
    return str(url.copy_with(query=None, fragment=None, userinfo=b""))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # lenient about "1.5", but nan or inf would mean "retry at once" or "never"
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _connect_failure(exc: BaseException | None) -> bool:
    """The request never left: the connection itself could not be made."""
    return isinstance(exc, TemporaryProviderError) and exc.not_sent


class _SafeToRetry:
    """tenacity predicate: temporary, and (for non-idempotent calls) surely not applied."""

    def __init__(self, idempotent: bool) -> None:
        self._idempotent = idempotent

    def __call__(self, exc: BaseException) -> bool:
        if isinstance(exc, CircuitOpen) or not isinstance(exc, TemporaryProviderError):
            return False
        return self._idempotent or exc.not_sent or isinstance(exc, RateLimited)


class HttpSeam:
    """One provider account's HTTP client. Adapters call ``request`` and nothing else."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        api_key: SecretStr | None,
        error_mapper: ErrorMapper | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        rate_limits: Mapping[str, RateLimit] | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self._clock = clock or SystemClock()
        self._mapper = error_mapper
        headers = {"Accept": "application/json", "User-Agent": "gpufsm/0.1"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        if client is None:
            client = httpx.Client(base_url=base_url, transport=transport,
                                  timeout=_timeout(timeout), headers=headers)
        else:
            client.base_url = httpx.URL(base_url)
            client.headers.update(headers)
            client.timeout = _timeout(timeout)
        self._client = client
        self._buckets = {op: TokenBucket(lim, self._clock)
                         for op, lim in (rate_limits or {}).items()}
        self._retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(provider, self._clock)
        self._rng = rng or random.Random()
        self.calls = 0  # HTTP requests actually sent, retries included
        self._count_lock = threading.Lock()
        self.observers: list[CallObserver] = []

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"HttpSeam(provider={self.provider!r}, base_url={str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        op: str,
        idempotent: bool,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        attempts: int | None = None,
    ) -> httpx.Response:
        """Send one logical request (retried as policy allows); return a 2xx response.

        ``op`` names the operation for per-operation rate limits and logs. ``attempts``
        lowers the policy's number of tries for a request whose answer is optional (a
        price to show): its failures must not hold up, nor trip the breaker for, the
        calls that matter. Raises the gpufsm error the response maps to once retries are
        spent.
        """
        limit = min(attempts, self._retry.attempts) if attempts else self._retry.attempts
        retrying = tenacity.Retrying(
            stop=functools.partial(self._stop, limit),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_SafeToRetry(idempotent)),
            sleep=self._clock.sleep,
            reraise=True,
            before_sleep=lambda rs: log.info(
                "%s %s: retry %d after %s", self.provider, op, rs.attempt_number,
                type(rs.outcome.exception()).__name__ if rs.outcome else "?"),
        )
        return retrying(self._once, method, path, op, json, params)

    def _stop(self, limit: int, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= limit:
            return True
        exc = state.outcome.exception() if state.outcome else None
        return _connect_failure(exc) and state.attempt_number >= self._retry.connect_attempts

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if _connect_failure(exc):
            return self._rng.uniform(0, self._retry.connect_backoff)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self._retry.max_retry_after))
        cap = min(self._retry.max_backoff, self._retry.initial * 2 ** (state.attempt_number - 1))
        return self._rng.uniform(0, cap)

    def _once(self, method: str, path: str, op: str, json: Any,
              params: Mapping[str, Any] | None) -> httpx.Response:
        self.breaker.before_call()
        taken = [b for b in (self._buckets.get("default"), self._buckets.get(op))
                 if b is not None]
        for bucket in taken:
            bucket.acquire()
        with self._count_lock:
            self.calls += 1
        request = self._client.build_request(method, path, json=json, params=params)
        try:
            response = self._client.send(request)
        except httpx.HTTPError as exc:
            error = self._translate_transport(exc, op, request)
            if isinstance(error, TemporaryProviderError) and error.not_sent:
                # The provider never saw it: its rate limit was not spent (Lambda allows
                # one launch per 12 s, and the quick retry must not wait for a token).
                for bucket in taken:
                    bucket.refund()
            self.breaker.record_failure()
            self._observe(op, type(error).__name__)
            raise error from exc
        if response.is_success:
            self.breaker.record_success()
            self._observe(op, "ok")
            return response
        error = self._translate(response)
        self._observe(op, type(error).__name__)
        if isinstance(error, TemporaryProviderError) and not isinstance(error, RateLimited):
            self.breaker.record_failure()
        else:
            self.breaker.record_success()  # the provider answered sensibly: it is up
        raise error

    def _observe(self, op: str, outcome: str) -> None:
        for observer in self.observers:
            try:
                observer(self.provider, op, outcome)
            except Exception:  # metrics must never break a provider call
                log.exception("call observer failed")

    def _translate_transport(self, exc: httpx.HTTPError, op: str,
                             request: httpx.Request) -> ProviderError:
        url = redacted_url(request.url)
        name = type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            error = ProviderUnavailable(
                f"{op}: cannot connect to {url} ({name}): is the base_url right and the "
                "service up?", provider=self.provider)
            error.not_sent = True
            return error
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(f"{op}: no answer in time from {url} ({name})",
                                   provider=self.provider)
        return ProviderUnavailable(f"{op}: connection to {url} failed ({name})",
                                   provider=self.provider)

    def _translate(self, response: httpx.Response) -> ProviderError:
        """The one place an HTTP error becomes a gpufsm error."""
        request_id = (response.headers.get("x-request-id")
                      or response.headers.get("request-id"))
        retry_after = parse_retry_after(response.headers.get("retry-after"),
                                        now=self._clock.now())
        error = self._mapper(response, self.provider) if self._mapper else None
        if error is None:
            error = _by_status(response, self.provider)
        if error.request_id is None:
            error.request_id = request_id
        if error.status_code is None:
            error.status_code = response.status_code
        # RFC 9110 allows Retry-After on 503 too: any temporary error may carry it.
        if isinstance(error, TemporaryProviderError) and error.retry_after is None:
            error.retry_after = retry_after
        return error


def status_class(status: int) -> type[ProviderError]:
    """The one reading of a bare HTTP status, for the seam and for every dialect.

    Never ProviderNotFound: a 404 without the provider's own not-found envelope is not
    the provider confirming anything (see the module docstring), so it is an unknown
    outcome like a 5xx.
    """
    if status == 429:
        return RateLimited
    if status >= 500 or status == 404:
        return ProviderUnavailable
    if status in (401, 403):
        return AuthError
    return InvalidRequest


#: How the seam words an error it made from the status alone, by the class it chose.
_BARE_TEXT: dict[type[ProviderError], str] = {
    RateLimited: "rate limited: {text} from {where}",
    AuthError: "not authorised: {text} from {where}",
    InvalidRequest: "rejected: {text} from {where}",
    ProviderUnavailable: "server error: {text} from {where}",
}


def _by_status(response: httpx.Response, provider: str) -> ProviderError:
    """An error from the HTTP status alone: the provider's mapper did not recognise it."""
    status = response.status_code
    text = f"{status} {response.reason_phrase}" if response.reason_phrase else f"HTTP {status}"
    where = f"{response.request.method} {redacted_url(response.request.url)}"
    template = _BARE_TEXT[status_class(status)]
    if status == 404:
        template = (f"404 without {provider}'s error body: wrong base_url or a proxy in the "
                    "way ({where}); the outcome is unknown")
    return status_class(status)(template.format(text=text, where=where),
                                provider=provider, status_code=status)
