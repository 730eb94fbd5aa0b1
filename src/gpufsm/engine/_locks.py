"""One lock per instance, in process: one worker owns an instance at a time.

Across processes the row version decides who wins; in process, commands on one
instance wait for each other instead of racing into VersionConflicts. Locks live in a
weak dictionary, so a fleet of 100k rows holds only the locks in use.
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["Held", "InstanceLocks"]


class _InstanceLock:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()


class Held:
    """Context manager over an instance lock that keeps the weak-dict entry alive."""

    __slots__ = ("_holder",)

    def __init__(self, holder: _InstanceLock) -> None:
        self._holder = holder

    def __enter__(self) -> None:
        self._holder.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._holder.lock.release()

    def try_acquire(self) -> bool:
        """Take the lock only if nobody holds it (a batch skips busy rows)."""
        return self._holder.lock.acquire(blocking=False)

    def release(self) -> None:
        self._holder.lock.release()


class InstanceLocks:
    """The locks of one Fleet, by instance id."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, _InstanceLock] = (
            weakref.WeakValueDictionary())
        self._guard = threading.Lock()

    def __call__(self, instance_id: str) -> Held:
        with self._guard:
            holder = self._locks.get(instance_id)
            if holder is None:
                holder = _InstanceLock()
                self._locks[instance_id] = holder
        return Held(holder)
