"""A clock that moves only when told, so a 10-minute boot takes no time in a test."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock"]

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """Deterministic time. ``sleep`` advances it, so polling loops finish instantly."""

    def __init__(self, start: datetime = _EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime (tzinfo=UTC)")
        self._start = start
        self._elapsed = 0.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        with self._lock:
            self._elapsed += seconds
