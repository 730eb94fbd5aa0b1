"""What the HTTP seam holds calls back with: rate limits, the circuit breaker, retries.

Each is a small piece of state on an injected clock (fake-clock tests never sleep), kept
apart from the seam (``gpufsm.adapters._http``) that applies them to every call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from gpufsm.clock import Clock
from gpufsm.errors import CircuitOpen

__all__ = ["CircuitBreaker", "RateLimit", "RetryPolicy", "TokenBucket"]

log = logging.getLogger("gpufsm.http")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("RateLimit needs rate > 0 and burst >= 1")


class TokenBucket:
    """A blocking token bucket on an injected clock (so fake-clock tests do not sleep)."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self._limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._stamp = clock.monotonic()
        self._lock = threading.Lock()

    def refund(self) -> None:
        """Give back a token taken for a request that never left this machine."""
        with self._lock:
            self._tokens = min(float(self._limit.burst), self._tokens + 1.0)

    def acquire(self) -> float:
        """Take one token, sleeping until one is free; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock.monotonic()
                self._tokens = min(
                    float(self._limit.burst),
                    self._tokens + (now - self._stamp) * self._limit.rate,
                )
                self._stamp = now
                # Within a hair of a token counts as one: rounding can leave 0.999…98
                # after the exact wait, and asking a clock to sleep 1e-17 s does not move
                # it (a fake clock would spin here for ever).
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                delay = (1.0 - self._tokens) / self._limit.rate
            self._clock.sleep(delay)
            waited += delay


class CircuitBreaker:
    """Closed → open after ``threshold`` failures in a row → half-open after ``reset_after``.

    While open, calls fail at once with CircuitOpen instead of piling onto a provider that
    is down; the reconciler reads that as UNKNOWN and changes nothing.
    """

    def __init__(self, provider: str, clock: Clock, *, threshold: int = 5,
                 reset_after: float = 30.0) -> None:
        self._provider = provider
        self._clock = clock
        self._threshold = threshold
        self._reset_after = reset_after
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and not self._half_open()

    def _half_open(self) -> bool:
        assert self._opened_at is not None
        return self._clock.monotonic() - self._opened_at >= self._reset_after

    def before_call(self) -> None:
        with self._lock:
            if self._opened_at is None or self._half_open():
                return
            left = self._reset_after - (self._clock.monotonic() - self._opened_at)
        raise CircuitOpen(
            f"circuit open after {self._threshold} failures in a row; "
            f"calls refused for {left:.0f}s more",
            provider=self._provider,
        )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self._threshold:
                if self._opened_at is None:
                    log.warning("%s: circuit opened after %d failures", self._provider,
                                self._failures)
                self._opened_at = self._clock.monotonic()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff ``initial * 2**n`` with full jitter, capped; Retry-After wins if given.

    A connection that cannot be made (refused, unresolvable host, connect timeout) is
    tried at most ``connect_attempts`` times with a pause of at most ``connect_backoff``
    seconds: nothing listening is rarely cured within a policy's minute of backoff, and a
    user who mistyped a URL should hear so in about a second, not after fifty.
    """

    attempts: int = 5
    initial: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    connect_attempts: int = 2
    connect_backoff: float = 0.5
