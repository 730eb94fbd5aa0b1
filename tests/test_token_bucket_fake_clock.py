"""A bug found by ``gpufsm demo --instances 50``: TokenBucket can spin forever on a FakeClock.

``acquire`` refills ``tokens + elapsed * rate``; float rounding can leave 0.9999999999999998
after the exact wait, so it asks to sleep ~1e-17 s, which does not move a FakeClock
already at, say, 1.0 s (below the float's resolution there): the loop never ends. On the
system clock real time moves on, so only fake-clock users (tests, the demo) hang.
Fixed by taking the token once the deficit is within a small epsilon.
"""

from __future__ import annotations

import pytest

from gpufsm.adapters import RateLimit, TokenBucket
from gpufsm.testing import FakeClock


class _StuckClock(FakeClock):
    """A FakeClock that raises instead of spinning when a sleep cannot move time."""

    def sleep(self, seconds: float) -> None:
        before = self.monotonic()
        super().sleep(seconds)
        if seconds > 0 and self.monotonic() == before:
            raise RuntimeError(f"sleep({seconds!r}) did not move the clock at {before!r}")


def test_an_empty_bucket_waits_one_interval_on_a_fake_clock() -> None:
    clock = _StuckClock()
    clock.advance(1.0)
    bucket = TokenBucket(RateLimit(5.0, burst=1), clock)
    assert bucket.acquire() == 0.0
    waited = bucket.acquire()
    assert waited == pytest.approx(0.2)
    assert clock.monotonic() == pytest.approx(1.2)
