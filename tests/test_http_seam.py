"""The HTTP seam: timeouts, retries, Retry-After, error mapping, breaker, rate limits, secrets.

Most tests drive ``HttpSeam`` over ``httpx.MockTransport`` with a scripted handler; a few
go over a real loopback ``EmulatorServer`` with a tiny dialect defined here. Time is a
FakeClock that records every sleep, so backoff is asserted, never waited for.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gpufsm.adapters import (
    CircuitBreaker,
    HttpSeam,
    RateLimit,
    RetryPolicy,
    TokenBucket,
    parse_retry_after,
)
from gpufsm.adapters._http import CONNECT_TIMEOUT
from gpufsm.errors import (
    AuthError,
    CircuitOpen,
    InvalidRequest,
    PermanentProviderError,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    TemporaryProviderError,
)
from gpufsm.testing import FakeClock
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)

KEY = "sk-test-SECRET-123"
BASE = "https://api.example.test/v1"


# ---- helpers ---------------------------------------------------------------------------


class RecordingClock(FakeClock):
    """A FakeClock that remembers every sleep it was asked for."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


Step = Any  # int status | (status, headers) | httpx.Response factory | exception class


class Script:
    """A MockTransport handler that answers from a list of steps; the last one repeats.

    A step is a status code, ``(status, headers)``, or an ``httpx.TransportError``
    subclass to raise. Every request is recorded.
    """

    def __init__(self, *steps: Step) -> None:
        assert steps
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if isinstance(step, type) and issubclass(step, Exception):
            raise step(f"simulated {step.__name__}", request=request)
        status, headers = step if isinstance(step, tuple) else (step, {})
        return httpx.Response(status, headers=headers, json={"status": status})

    @property
    def count(self) -> int:
        return len(self.requests)


@pytest.fixture
def rclock() -> RecordingClock:
    return RecordingClock()


@pytest.fixture
def make_seam(rclock: RecordingClock) -> Iterator[Callable[..., HttpSeam]]:
    seams: list[HttpSeam] = []

    def make(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> HttpSeam:
        kw.setdefault("provider", "acme")
        kw.setdefault("base_url", BASE)
        kw.setdefault("api_key", SecretStr(KEY))
        kw.setdefault("clock", rclock)
        kw.setdefault("rng", random.Random(0))
        if "client" not in kw:
            kw["transport"] = httpx.MockTransport(handler)
        seam = HttpSeam(**kw)
        seams.append(seam)
        return seam

    yield make
    for seam in seams:
        seam.close()


def full_text(exc: BaseException) -> str:
    """Every string an exception chain can show: messages, reprs and the traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ---- timeouts and transport errors ----------------------------------------------------------


class TestTimeouts:
    def test_every_request_carries_the_configured_timeout(self, make_seam):
        script = Script(200)
        seam = make_seam(script, timeout=5.0)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert script.requests[0].extensions["timeout"] == {
            "connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}

    def test_default_timeout_is_thirty_seconds(self, make_seam):
        script = Script(200)
        seam = make_seam(script)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert script.requests[0].extensions["timeout"]["read"] == 30.0

    def test_an_injected_client_without_timeout_gets_one(self, make_seam):
        script = Script(200)
        client = httpx.Client(transport=httpx.MockTransport(script), timeout=None)
        seam = make_seam(script, client=client, timeout=7.5)
        assert client.timeout == httpx.Timeout(7.5)
        response = seam.request("GET", "/instances", op="list", idempotent=True)
        assert response.status_code == 200
        assert script.requests[0].extensions["timeout"]["connect"] == 7.5
        assert str(script.requests[0].url) == f"{BASE}/instances"
        assert script.requests[0].headers["authorization"] == f"Bearer {KEY}"

    def test_read_timeout_becomes_provider_timeout(self, make_seam):
        seam = make_seam(Script(httpx.ReadTimeout), retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderTimeout) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert info.value.provider == "acme"
        assert info.value.not_sent is False
        assert "list" in str(info.value)
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)

    @pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout])
    def test_connect_failure_is_unavailable_and_not_sent(self, make_seam, exc):
        seam = make_seam(Script(exc), retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderUnavailable) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert info.value.not_sent is True
        assert "cannot connect" in str(info.value)

    @pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadTimeout,
                                     httpx.RemoteProtocolError])
    def test_transport_errors_name_the_url_without_query_or_key(self, make_seam, exc):
        seam = make_seam(Script(exc), retry=RetryPolicy(attempts=1))
        with pytest.raises(TemporaryProviderError) as info:
            seam.request("GET", "/instances", op="list", idempotent=True,
                         params={"api_key": KEY, "page": 2})
        assert f"{BASE}/instances" in str(info.value)
        assert "page" not in str(info.value)
        assert_no_key(full_text(info.value))

    def test_connect_timeout_is_capped_below_the_call_timeout(self, make_seam):
        script = Script(200)
        seam = make_seam(script, timeout=60.0)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert script.requests[0].extensions["timeout"] == {
            "connect": CONNECT_TIMEOUT, "read": 60.0, "write": 60.0, "pool": 60.0}

    @pytest.mark.parametrize("exc", [httpx.RemoteProtocolError, httpx.ReadError])
    def test_broken_connection_is_unavailable_and_maybe_sent(self, make_seam, exc):
        seam = make_seam(Script(exc), retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderUnavailable) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert info.value.not_sent is False


# ---- retries: what is retried, and how often ------------------------------------------------


class TestRetries:
    def test_idempotent_5xx_retried_until_attempts_then_unavailable(self, make_seam, rclock):
        script = Script(503)
        seam = make_seam(script, retry=RetryPolicy(attempts=4))
        with pytest.raises(ProviderUnavailable) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert script.count == 4
        assert seam.calls == 4
        assert len(rclock.sleeps) == 3
        assert info.value.status_code == 503

    def test_idempotent_5xx_then_success_returns_the_response(self, make_seam, rclock):
        script = Script(500, 502, 200)
        seam = make_seam(script)
        response = seam.request("GET", "/instances", op="list", idempotent=True)
        assert response.status_code == 200
        assert response.json() == {"status": 200}
        assert script.count == 3
        assert len(rclock.sleeps) == 2

    def test_idempotent_read_timeout_is_retried(self, make_seam):
        script = Script(httpx.ReadTimeout, 200)
        seam = make_seam(script)
        assert seam.request("GET", "/x", op="get", idempotent=True).status_code == 200
        assert script.count == 2

    @pytest.mark.parametrize("step", [500, 503, httpx.ReadTimeout, httpx.RemoteProtocolError])
    def test_non_idempotent_call_not_retried_when_it_may_have_been_applied(
        self, make_seam, rclock, step
    ):
        script = Script(step, 200)
        seam = make_seam(script)
        with pytest.raises(TemporaryProviderError) as info:
            seam.request("POST", "/launch", op="launch", idempotent=False, json={"n": 1})
        assert script.count == 1  # a second POST could double the launch
        assert rclock.sleeps == []
        assert info.value.not_sent is False

    def test_non_idempotent_429_is_retried(self, make_seam, rclock):
        script = Script(429, 429, 200)
        seam = make_seam(script)
        response = seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        assert response.status_code == 200
        assert script.count == 3
        assert [r.method for r in script.requests] == ["POST"] * 3
        assert len(rclock.sleeps) == 2

    @pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout])
    def test_non_idempotent_connect_failure_is_retried_once(self, make_seam, exc):
        script = Script(exc, 200)
        seam = make_seam(script)
        response = seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        assert response.status_code == 200
        assert script.count == 2

    @pytest.mark.parametrize("idempotent", [True, False])
    def test_connect_failure_gets_one_quick_retry_not_the_policy(self, make_seam, rclock,
                                                                idempotent):
        script = Script(httpx.ConnectError)
        seam = make_seam(script, retry=RetryPolicy(attempts=5, initial=10.0))
        with pytest.raises(ProviderUnavailable) as info:
            seam.request("POST", "/launch", op="launch", idempotent=idempotent, json={})
        assert info.value.not_sent is True
        assert script.count == 2
        assert len(rclock.sleeps) == 1 and rclock.sleeps[0] <= 0.5

    @pytest.mark.parametrize(("attempts", "sent"), [(1, 1), (2, 2), (9, 5)])
    def test_a_request_may_ask_for_fewer_attempts_never_more(self, make_seam, attempts, sent):
        script = Script(503)
        seam = make_seam(script, retry=RetryPolicy(attempts=5))
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True, attempts=attempts)
        assert script.count == sent

    def test_connect_attempts_are_a_policy_setting(self, make_seam, rclock):
        script = Script(httpx.ConnectError)
        seam = make_seam(script, retry=RetryPolicy(attempts=5, connect_attempts=3,
                                                   connect_backoff=0.1))
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 3
        assert all(s <= 0.1 for s in rclock.sleeps)

    @pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
    def test_permanent_errors_are_never_retried(self, make_seam, rclock, status):
        script = Script(status)
        seam = make_seam(script)
        with pytest.raises(PermanentProviderError):
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert script.count == 1
        assert rclock.sleeps == []

    def test_429_exhausting_attempts_raises_rate_limited(self, make_seam):
        script = Script((429, {"Retry-After": "2"}))
        seam = make_seam(script, retry=RetryPolicy(attempts=3))
        with pytest.raises(RateLimited) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert info.value.retry_after == 2.0
        assert script.count == 3

    def test_every_retry_is_logged_at_info(self, make_seam, caplog):
        caplog.set_level(logging.INFO, logger="gpufsm")
        seam = make_seam(Script(503, 200))
        seam.request("GET", "/instances", op="list", idempotent=True)
        retries = [r for r in caplog.records if r.name == "gpufsm.http"]
        assert len(retries) == 1
        assert retries[0].getMessage() == "acme list: retry 1 after ProviderUnavailable"


# ---- Retry-After and backoff ----------------------------------------------------------------


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class TestParseRetryAfter:
    @pytest.mark.parametrize(("value", "seconds"), [
        ("7", 7.0), (" 12 ", 12.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0), ("120", 120.0),
    ])
    def test_delta_seconds(self, value, seconds):
        assert parse_retry_after(value, NOW) == seconds

    @pytest.mark.parametrize("value", [
        "Thu, 01 Jan 2026 12:00:30 GMT",        # IMF-fixdate
        "Thursday, 01-Jan-26 12:00:30 GMT",     # RFC 850
        "Thu Jan  1 12:00:30 2026",             # asctime, no zone: read as UTC
        "Thu, 01 Jan 2026 13:00:30 +0100",      # an offset is honoured
    ])
    def test_http_date_in_the_future(self, value):
        assert parse_retry_after(value, NOW) == 30.0

    def test_http_date_in_the_past_is_zero(self):
        assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", NOW) == 0.0

    def test_http_date_defaults_to_real_now(self):
        soon = datetime.now(UTC) + timedelta(seconds=60)
        value = email.utils.format_datetime(soon, usegmt=True)
        assert 57.0 <= parse_retry_after(value) <= 60.0

    @pytest.mark.parametrize("value", [None, "", "   ", "soon", "0x10", "Thu, 99 Foo 2026"])
    def test_garbage_is_none(self, value):
        assert parse_retry_after(value, NOW) is None

    def test_nan_is_garbage(self):
        assert parse_retry_after("nan", NOW) is None


class TestBackoff:
    def test_retry_after_seconds_is_slept(self, make_seam, rclock):
        script = Script((429, {"Retry-After": "7"}), 200)
        seam = make_seam(script)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [7.0]
        assert rclock.monotonic() == 7.0

    def test_retry_after_http_date_is_slept(self, make_seam):
        # The clock starts at real wall time, so either reading of "now" agrees.
        start = datetime.now(UTC).replace(microsecond=0)
        clock = RecordingClock(start)
        when = email.utils.format_datetime(start + timedelta(seconds=45), usegmt=True)
        seam = make_seam(Script((429, {"Retry-After": when}), 200), clock=clock)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert len(clock.sleeps) == 1
        assert 42.0 <= clock.sleeps[0] <= 45.0

    def test_retry_after_http_date_uses_the_injected_clock(self, make_seam):
        clock = RecordingClock(datetime(2030, 6, 1, tzinfo=UTC))
        seam = make_seam(Script((429, {"Retry-After": "Sat, 01 Jun 2030 00:00:09 GMT"}), 200),
                         clock=clock)
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert clock.sleeps == [9.0]

    def test_past_http_date_retries_at_once(self, make_seam, rclock):
        script = Script((429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 200)
        make_seam(script).request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [0.0]
        assert script.count == 2

    def test_retry_after_is_capped(self, make_seam, rclock):
        script = Script((429, {"Retry-After": "1000"}), 200)
        seam = make_seam(script, retry=RetryPolicy(max_retry_after=60.0))
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [60.0]

    def test_retry_after_is_not_bound_by_max_backoff(self, make_seam, rclock):
        seam = make_seam(Script((429, {"Retry-After": "50"}), 200),
                         retry=RetryPolicy(max_backoff=1.0))
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [50.0]

    def test_garbage_retry_after_falls_back_to_backoff(self, make_seam, rclock):
        seam = make_seam(Script((429, {"Retry-After": "later"}), 200),
                         retry=RetryPolicy(initial=0.5), rng=random.Random(3))
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [random.Random(3).uniform(0, 0.5)]

    def test_retry_after_on_503_is_honoured(self, make_seam, rclock):
        seam = make_seam(Script((503, {"Retry-After": "9"}), 200))
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == [9.0]

    def test_jittered_exponential_backoff_with_seeded_rng(self, make_seam, rclock):
        policy = RetryPolicy(attempts=7, initial=0.5, max_backoff=3.0)
        breaker = CircuitBreaker("acme", rclock, threshold=100)
        seam = make_seam(Script(503), retry=policy, rng=random.Random(42), breaker=breaker)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/instances", op="list", idempotent=True)
        caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]  # initial * 2**n, capped at max_backoff
        expected_rng = random.Random(42)
        assert rclock.sleeps == [expected_rng.uniform(0, cap) for cap in caps]
        for slept, cap in zip(rclock.sleeps, caps, strict=True):
            assert 0.0 <= slept <= cap

    def test_backoff_is_jittered(self, make_seam):
        runs = []
        for seed in (1, 2):
            clock = RecordingClock()
            seam = make_seam(Script(503), clock=clock, rng=random.Random(seed),
                             retry=RetryPolicy(attempts=4))
            with pytest.raises(ProviderUnavailable):
                seam.request("GET", "/x", op="get", idempotent=True)
            runs.append(clock.sleeps)
        assert runs[0] != runs[1]
        assert all(len(r) == 3 for r in runs)

    def test_429_without_retry_after_uses_backoff(self, make_seam, rclock):
        seam = make_seam(Script(429, 429, 200), rng=random.Random(9),
                         retry=RetryPolicy(initial=2.0))
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        rng = random.Random(9)
        assert rclock.sleeps == [rng.uniform(0, 2.0), rng.uniform(0, 4.0)]


# ---- error mapping --------------------------------------------------------------------------


class TestErrorMapping:
    @pytest.mark.parametrize(("status", "cls"), [
        (400, InvalidRequest), (401, AuthError), (403, AuthError), (404, ProviderUnavailable),
        (409, InvalidRequest), (422, InvalidRequest), (429, RateLimited),
        (500, ProviderUnavailable), (502, ProviderUnavailable), (503, ProviderUnavailable),
        (504, ProviderUnavailable),
    ])
    def test_status_mapping(self, make_seam, status, cls):
        seam = make_seam(Script((status, {"x-request-id": "req-77"})),
                         retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderError) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert type(info.value) is cls
        assert info.value.status_code == status
        assert info.value.request_id == "req-77"
        assert info.value.provider == "acme"

    def test_request_id_appears_in_the_message(self, make_seam):
        seam = make_seam(Script((400, {"x-request-id": "req-77"})))
        with pytest.raises(InvalidRequest) as info:
            seam.request("GET", "/instances/9", op="get", idempotent=True)
        assert "(request req-77)" in str(info.value)

    def test_request_id_falls_back_to_request_id_header(self, make_seam):
        seam = make_seam(Script((400, {"request-id": "abc"})))
        with pytest.raises(InvalidRequest) as info:
            seam.request("GET", "/instances/9", op="get", idempotent=True)
        assert info.value.request_id == "abc"

    def test_no_request_id_header_leaves_it_none(self, make_seam):
        seam = make_seam(Script(400))
        with pytest.raises(InvalidRequest) as info:
            seam.request("GET", "/instances/9", op="get", idempotent=True)
        assert info.value.request_id is None

    @pytest.mark.parametrize("body", [b"", b"<html>404 Not Found</html>", b'{"detail": "x"}'])
    def test_a_404_the_mapper_does_not_recognise_is_an_unknown_outcome(self, make_seam,
                                                                      body):
        """Issue 9 item 5: one rule for every adapter. Only a mapper that recognised the
        provider's own not-found envelope may say "absent"; the status alone never does."""
        mapped: list[int] = []

        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            mapped.append(response.status_code)
            return None

        seam = make_seam(lambda r: httpx.Response(404, content=body),
                         error_mapper=mapper, retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderUnavailable) as info:
            seam.request("GET", "/instances/9", op="get", idempotent=True,
                         params={"api_key": KEY})
        assert not isinstance(info.value, ProviderNotFound)
        assert mapped == [404]
        message = str(info.value)
        assert "404 without acme's error body: wrong base_url or a proxy in the way" in message
        assert f"GET {BASE}/instances/9" in message
        assert_no_key(full_text(info.value))

    def test_a_404_the_mapper_recognises_is_not_found(self, make_seam):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            if response.json().get("code") == "acme/gone":
                return ProviderNotFound("gone", provider=provider, code="acme/gone")
            return None

        seam = make_seam(lambda r: httpx.Response(404, json={"code": "acme/gone"}),
                         error_mapper=mapper)
        with pytest.raises(ProviderNotFound) as info:
            seam.request("GET", "/instances/9", op="get", idempotent=True)
        assert info.value.status_code == 404
        assert seam.calls == 1  # permanent: not retried

    def test_mapper_is_consulted_first_and_its_class_wins(self, make_seam):
        seen: list[tuple[int, str]] = []

        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            seen.append((response.status_code, provider))
            return QuotaExceeded("too many instances", provider=provider, code="quota/x")

        script = Script((503, {"x-request-id": "r1"}))
        seam = make_seam(script, error_mapper=mapper)
        with pytest.raises(QuotaExceeded) as info:
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert seen == [(503, "acme")]
        assert script.count == 1  # permanent by the mapper's word: not retried
        assert info.value.status_code == 503  # filled in by the seam
        assert info.value.request_id == "r1"
        assert info.value.code == "quota/x"

    def test_mapper_values_are_kept(self, make_seam):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            return InvalidRequest("bad", provider=provider, status_code=418, request_id="mine")

        seam = make_seam(Script((400, {"x-request-id": "theirs"})), error_mapper=mapper)
        with pytest.raises(InvalidRequest) as info:
            seam.request("GET", "/x", op="get", idempotent=True)
        assert info.value.status_code == 418
        assert info.value.request_id == "mine"

    def test_mapper_returning_none_falls_back_to_status(self, make_seam):
        calls: list[int] = []

        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            calls.append(response.status_code)
            return None

        seam = make_seam(Script(403), error_mapper=mapper)
        with pytest.raises(AuthError) as info:
            seam.request("GET", "/x", op="get", idempotent=True)
        assert calls == [403]
        assert info.value.status_code == 403

    def test_mapper_sees_the_body(self, make_seam):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            return InvalidRequest(f"body said {response.json()['status']}", provider=provider)

        seam = make_seam(Script(400), error_mapper=mapper)
        with pytest.raises(InvalidRequest, match="body said 400"):
            seam.request("GET", "/x", op="get", idempotent=True)

    def test_mapped_rate_limit_gets_retry_after_from_the_header(self, make_seam, rclock):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            if response.status_code == 400:
                return RateLimited("slow down (in a 400)", provider=provider)
            return None

        script = Script((400, {"Retry-After": "4"}), 200)
        seam = make_seam(script, error_mapper=mapper)
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        assert script.count == 2
        assert rclock.sleeps == [4.0]

    def test_mapped_retry_after_wins_over_the_header(self, make_seam, rclock):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            return RateLimited("body says 11", provider=provider, retry_after=11.0)

        seam = make_seam(Script((429, {"Retry-After": "4"}), 200), error_mapper=mapper)
        seam.request("GET", "/x", op="get", idempotent=True)
        assert rclock.sleeps == [11.0]

    def test_success_is_never_mapped(self, make_seam):
        def mapper(response: httpx.Response, provider: str) -> ProviderError | None:
            raise AssertionError("mapper called on a 2xx")

        seam = make_seam(Script(201), error_mapper=mapper)
        assert seam.request("POST", "/x", op="x", idempotent=False).status_code == 201


# ---- circuit breaker ------------------------------------------------------------------------


class TestCircuitBreaker:
    def _seam(self, make_seam, rclock, script, *, threshold=3, reset_after=30.0, attempts=1):
        breaker = CircuitBreaker("acme", rclock, threshold=threshold, reset_after=reset_after)
        return make_seam(script, breaker=breaker, retry=RetryPolicy(attempts=attempts))

    def test_opens_after_threshold_and_fails_fast(self, make_seam, rclock):
        script = Script(503)
        seam = self._seam(make_seam, rclock, script)
        for _ in range(2):
            with pytest.raises(ProviderUnavailable):
                seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is False
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is True
        for _ in range(3):
            with pytest.raises(CircuitOpen) as info:
                seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 3  # nothing sent while open
        assert seam.calls == 3
        assert "circuit open" in str(info.value)
        assert "30s more" in str(info.value)
        assert info.value.provider == "acme"
        assert isinstance(info.value, TemporaryProviderError)

    def test_message_counts_down(self, make_seam, rclock):
        seam = self._seam(make_seam, rclock, Script(503), threshold=1)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        rclock.advance(20)
        with pytest.raises(CircuitOpen, match="10s more"):
            seam.request("GET", "/x", op="get", idempotent=True)

    def test_half_open_after_reset_lets_a_call_through_and_success_closes(
        self, make_seam, rclock
    ):
        script = Script(503, 503, 200)
        seam = self._seam(make_seam, rclock, script, threshold=2, reset_after=30.0)
        for _ in range(2):
            with pytest.raises(ProviderUnavailable):
                seam.request("GET", "/x", op="get", idempotent=True)
        rclock.advance(29.9)
        with pytest.raises(CircuitOpen):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 2
        rclock.advance(0.1)
        assert seam.breaker.is_open is False  # half-open
        assert seam.request("GET", "/x", op="get", idempotent=True).status_code == 200
        assert script.count == 3
        # Closed again: the count starts over, one failure does not reopen it.
        script.steps.append(503)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is False
        assert script.count == 4

    def test_failure_while_half_open_reopens_at_once(self, make_seam, rclock):
        script = Script(503)
        seam = self._seam(make_seam, rclock, script, threshold=2, reset_after=10.0)
        for _ in range(2):
            with pytest.raises(ProviderUnavailable):
                seam.request("GET", "/x", op="get", idempotent=True)
        rclock.advance(10)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 3
        with pytest.raises(CircuitOpen, match="10s more"):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 3

    def test_transport_errors_count_as_failures(self, make_seam, rclock):
        script = Script(httpx.ReadTimeout, httpx.ConnectError)
        seam = self._seam(make_seam, rclock, script, threshold=2)
        with pytest.raises(ProviderTimeout):
            seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(CircuitOpen):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 2

    def test_retries_stop_when_the_breaker_opens(self, make_seam, rclock):
        script = Script(503)
        seam = self._seam(make_seam, rclock, script, threshold=2, attempts=5)
        with pytest.raises(CircuitOpen):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert script.count == 2
        assert len(rclock.sleeps) == 2  # the third attempt is refused locally, not retried

    @pytest.mark.parametrize("status", [400, 401, 422])
    def test_4xx_answers_do_not_count(self, make_seam, rclock, status):
        script = Script(status)
        seam = self._seam(make_seam, rclock, script, threshold=2)
        for _ in range(5):
            with pytest.raises(PermanentProviderError):
                seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is False
        assert script.count == 5

    def test_429_does_not_count(self, make_seam, rclock):
        script = Script(429)
        seam = self._seam(make_seam, rclock, script, threshold=2)
        for _ in range(4):
            with pytest.raises(RateLimited):
                seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is False
        assert script.count == 4

    def test_a_4xx_answer_breaks_the_run_of_failures(self, make_seam, rclock):
        script = Script(503, 400, 503)
        seam = self._seam(make_seam, rclock, script, threshold=2)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(InvalidRequest):
            seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert seam.breaker.is_open is False

    def test_opening_is_logged(self, make_seam, rclock, caplog):
        caplog.set_level(logging.WARNING, logger="gpufsm")
        seam = self._seam(make_seam, rclock, Script(503), threshold=1)
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        assert "acme: circuit opened after 1 failures" in caplog.text

    def test_default_breaker_uses_the_seams_clock(self, make_seam, rclock):
        script = Script(503)
        seam = make_seam(script, retry=RetryPolicy(attempts=1))
        for _ in range(5):  # default threshold
            with pytest.raises(ProviderUnavailable):
                seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(CircuitOpen):
            seam.request("GET", "/x", op="get", idempotent=True)
        rclock.advance(30.0)  # default reset_after, on the fake clock
        script.steps.append(200)
        assert seam.request("GET", "/x", op="get", idempotent=True).status_code == 200


# ---- rate limits ----------------------------------------------------------------------------


class TestRateLimits:
    def test_rate_limit_validation(self):
        for rate, burst in [(0, 1), (-1, 1), (1, 0), (0.5, -2)]:
            with pytest.raises(ValueError, match="rate > 0"):
                RateLimit(rate=rate, burst=burst)
        assert RateLimit(0.001).burst == 1

    def test_token_bucket_burst_then_waits(self):
        clock = RecordingClock()
        bucket = TokenBucket(RateLimit(rate=2.0, burst=3), clock)
        assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert bucket.acquire() == pytest.approx(0.5)
        assert clock.monotonic() == pytest.approx(0.5)
        clock.advance(10)  # refills only up to burst
        assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert bucket.acquire() == pytest.approx(0.5)

    def test_default_bucket_makes_the_second_call_wait_one_second(self, make_seam, rclock):
        script = Script(200)
        seam = make_seam(script, rate_limits={"default": RateLimit(rate=1, burst=1)})
        seam.request("GET", "/a", op="list", idempotent=True)
        assert rclock.sleeps == []
        seam.request("GET", "/b", op="get", idempotent=True)
        assert rclock.sleeps == [pytest.approx(1.0)]
        assert rclock.monotonic() == pytest.approx(1.0)
        assert script.count == 2

    def test_per_op_bucket_applies_only_to_its_op(self, make_seam, rclock):
        script = Script(200)
        seam = make_seam(script, rate_limits={"launch": RateLimit(rate=1 / 12)})
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        for _ in range(5):
            seam.request("GET", "/instances", op="list", idempotent=True)
        assert rclock.sleeps == []
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        assert sum(rclock.sleeps) == pytest.approx(12.0)
        assert script.count == 7

    def test_default_and_op_buckets_stack(self, make_seam, rclock):
        seam = make_seam(Script(200), rate_limits={"default": RateLimit(1),
                                                   "launch": RateLimit(1 / 12)})
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        seam.request("POST", "/launch", op="launch", idempotent=False, json={})
        assert rclock.monotonic() == pytest.approx(12.0)

    def test_retries_take_tokens_too(self, make_seam, rclock):
        script = Script((429, {"Retry-After": "0"}), 200)
        seam = make_seam(script, rate_limits={"default": RateLimit(rate=1)})
        seam.request("GET", "/x", op="get", idempotent=True)
        assert rclock.sleeps == [0.0, pytest.approx(1.0)]  # Retry-After, then the bucket


# ---- the API key never leaks ----------------------------------------------------------------


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert "SECRET" not in text


class TestSecrets:
    @pytest.fixture(autouse=True)
    def _debug_logs(self, caplog):
        caplog.set_level(logging.DEBUG)
        for name in ("gpufsm", "httpx", "httpcore"):
            caplog.set_level(logging.DEBUG, logger=name)

    def test_key_sent_only_as_bearer_header(self, make_seam):
        script = Script(200)
        seam = make_seam(script)
        seam.request("GET", "/instances", op="list", idempotent=True, params={"page": 2})
        request = script.requests[0]
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert_no_key(str(request.url))

    def test_no_key_no_header(self, make_seam):
        script = Script(200)
        make_seam(script, api_key=None).request("GET", "/x", op="get", idempotent=True)
        assert "authorization" not in script.requests[0].headers

    def test_repr_hides_the_key(self, make_seam):
        seam = make_seam(Script(200))
        assert repr(seam) == f"HttpSeam(provider='acme', base_url='{BASE}/')"
        assert_no_key(repr(seam), str(seam))

    def test_success_and_retry_paths_log_no_key(self, make_seam, caplog):
        seam = make_seam(Script(503, (429, {"Retry-After": "1"}), 200))
        seam.request("GET", "/instances", op="list", idempotent=True)
        assert "retry 1 after ProviderUnavailable" in caplog.text  # logs were captured
        assert "HTTP Request" in caplog.text
        assert_no_key(caplog.text, *(str(r.__dict__) for r in caplog.records))

    @pytest.mark.parametrize("step", [401, 403, 500, 404, 429, httpx.ConnectError,
                                      httpx.ReadTimeout, httpx.RemoteProtocolError])
    def test_failure_paths_leak_no_key(self, make_seam, caplog, step):
        seam = make_seam(Script(step), retry=RetryPolicy(attempts=2))
        with pytest.raises(ProviderError) as info:
            seam.request("POST", "/launch", op="launch", idempotent=False, json={"a": 1})
        assert_no_key(full_text(info.value), caplog.text,
                      *(str(r.__dict__) for r in caplog.records))

    def test_circuit_open_leaks_no_key(self, make_seam, rclock, caplog):
        breaker = CircuitBreaker("acme", rclock, threshold=1)
        seam = make_seam(Script(500), breaker=breaker, retry=RetryPolicy(attempts=1))
        with pytest.raises(ProviderUnavailable):
            seam.request("GET", "/x", op="get", idempotent=True)
        with pytest.raises(CircuitOpen) as info:
            seam.request("GET", "/x", op="get", idempotent=True)
        assert_no_key(full_text(info.value), caplog.text)


# ---- over a real loopback server ------------------------------------------------------------


class ItemsDialect:
    """A tiny provider: GET /v1/items lists, POST /v1/items creates."""

    name = "items"

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.handled = 0

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        self.handled += 1
        if request.path == "/v1/items" and request.method == "GET":
            return EmulatorResponse(200, {"items": list(self.items)},
                                    headers={"x-request-id": f"req-{self.handled}"})
        if request.path == "/v1/items" and request.method == "POST":
            item = {"id": len(self.items) + 1, **(request.json() or {})}
            self.items.append(item)
            return EmulatorResponse(201, item)
        return EmulatorResponse(404, {"error": "no such route"}, headers={"x-request-id": "nf"})

    def unauthorized(self) -> EmulatorResponse:
        return EmulatorResponse(401, {"error": "bad key"})

    def rate_limited(self) -> EmulatorResponse:
        return EmulatorResponse(429, {"error": "slow down"})

    def server_error(self) -> EmulatorResponse:
        return EmulatorResponse(500, {"error": "oops"})


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    # One server for the module: every stop waits out serve_forever's poll interval.
    with EmulatorServer(ItemsDialect(), api_key=KEY) as server:
        yield server


@pytest.fixture
def items_server(shared_server: EmulatorServer) -> EmulatorServer:
    shared_server.dialect = ItemsDialect()
    shared_server.clear_faults()
    shared_server.counts.clear()
    shared_server.log.clear()
    return shared_server


@pytest.fixture
def live_seam(items_server: EmulatorServer, rclock: RecordingClock) -> Iterator[HttpSeam]:
    seam = HttpSeam(provider="items", base_url=f"{items_server.url}/v1",
                    api_key=SecretStr(KEY), clock=rclock, timeout=5.0,
                    rng=random.Random(0))
    yield seam
    seam.close()


class TestOverLoopback:
    @pytest.fixture(autouse=True)
    def _debug_logs(self, caplog):
        caplog.set_level(logging.DEBUG)
        for name in ("gpufsm", "httpx", "httpcore"):
            caplog.set_level(logging.DEBUG, logger=name)

    def test_429_with_retry_after_then_success(self, live_seam, items_server, rclock, caplog):
        items_server.inject(HttpFault("429", retry_after=3))
        response = live_seam.request("GET", "/items", op="list", idempotent=True)
        assert response.json() == {"items": []}
        assert rclock.sleeps == [3.0]
        assert items_server.counts["GET /v1/items"] == 2
        assert [s for _, _, s in items_server.log] == [429, 200]
        assert any(r.name.startswith("httpcore") for r in caplog.records)
        assert_no_key(caplog.text, *(str(r.__dict__) for r in caplog.records))

    def test_dropped_launch_is_not_repeated(self, live_seam, items_server, rclock, caplog):
        items_server.inject(HttpFault("drop", method="POST", after_work=True))
        with pytest.raises(ProviderUnavailable) as info:
            live_seam.request("POST", "/items", op="launch", idempotent=False, json={"n": 1})
        assert info.value.not_sent is False
        assert items_server.dialect.items == [{"id": 1, "n": 1}]  # done exactly once
        assert items_server.counts["POST /v1/items"] == 1
        assert rclock.sleeps == []
        assert_no_key(full_text(info.value), caplog.text)
        # and the next call on the same seam works on a fresh connection
        assert live_seam.request("GET", "/items", op="list",
                                 idempotent=True).json()["items"] == [{"id": 1, "n": 1}]

    def test_server_error_mapped_with_request_id(self, live_seam, items_server):
        items_server.inject(HttpFault("5xx", status=502, times=10))
        with pytest.raises(ProviderUnavailable) as info2:
            live_seam.request("POST", "/items", op="launch", idempotent=False, json={})
        assert info2.value.status_code == 502
        assert items_server.counts["POST /v1/items"] == 1
        assert items_server.dialect.items == []
        items_server.clear_faults()
        live_seam.breaker.record_success()  # the 502 counted; the 404s' retries count too
        with pytest.raises(ProviderUnavailable) as info:  # no mapper: a 404 proves nothing
            live_seam.request("GET", "/nope", op="get", idempotent=True)
        assert info.value.request_id == "nf"
        assert info.value.status_code == 404
        assert f"{items_server.url}/v1/nope" in str(info.value)

    def test_wrong_key_is_auth_error_without_the_key(self, items_server, rclock, caplog):
        seam = HttpSeam(provider="items", base_url=items_server.url,
                        api_key=SecretStr("sk-test-WRONG"), clock=rclock)
        try:
            with pytest.raises(AuthError) as info:
                seam.request("GET", "/v1/items", op="list", idempotent=True)
        finally:
            seam.close()
        assert info.value.status_code == 401
        assert items_server.counts["GET /v1/items"] == 1
        assert_no_key(full_text(info.value), caplog.text)
        assert "sk-test-WRONG" not in caplog.text + full_text(info.value)

    def test_refused_connection_retries_a_launch_once(self, rclock):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        seam = HttpSeam(provider="items", base_url=f"http://127.0.0.1:{port}",
                        api_key=SecretStr(KEY), clock=rclock, retry=RetryPolicy(attempts=3))
        try:
            with pytest.raises(ProviderUnavailable) as info:
                seam.request("POST", "/v1/items", op="launch", idempotent=False, json={})
        finally:
            seam.close()
        assert info.value.not_sent is True
        assert seam.calls == 2
        assert len(rclock.sleeps) == 1
        assert f"http://127.0.0.1:{port}/v1/items" in str(info.value)
        assert_no_key(full_text(info.value))

    def test_a_refused_launch_does_not_spend_the_launch_rate_limit(self, rclock):
        """Lambda allows one launch per 12 s: the quick retry of a request that never
        left must not wait twelve seconds for a token the provider never saw spent."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        seam = HttpSeam(provider="items", base_url=f"http://127.0.0.1:{port}",
                        api_key=SecretStr(KEY), clock=rclock,
                        rate_limits={"launch": RateLimit(1 / 12, burst=1)})
        try:
            with pytest.raises(ProviderUnavailable):
                seam.request("POST", "/v1/items", op="launch", idempotent=False, json={})
        finally:
            seam.close()
        assert seam.calls == 2
        assert sum(rclock.sleeps) < 1.0, rclock.sleeps

    def test_refused_connection_fails_in_seconds_with_the_default_policy(self):
        """Issue 10 item 5: 49.8 s of retries against a port nothing listens on. With the
        default policy and the real clock, the whole call now takes well under 5 s."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        seam = HttpSeam(provider="items", base_url=f"http://127.0.0.1:{port}",
                        api_key=SecretStr(KEY))
        started = time.monotonic()
        try:
            with pytest.raises(ProviderUnavailable) as info:
                seam.request("GET", "/v1/items", op="list", idempotent=True)
        finally:
            seam.close()
        assert time.monotonic() - started < 5.0
        assert info.value.not_sent is True
        assert f"127.0.0.1:{port}/v1/items" in str(info.value)
