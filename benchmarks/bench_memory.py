"""Memory for tracked instances, each measured in a fresh child process.

Why a child: RSS in this process already holds the 100k records the load figure built,
freed arenas Python keeps, and every library the other rows imported. A child that
imports what it needs, warms up, reads RSS, builds the instances and reads RSS again
measures only the instances. RSS (not tracemalloc) is the figure because it is what a
host pays; tracemalloc would also slow the build several-fold.

What gpufsm holds: a reconcile pass loads every live row with ``list_tracked`` (the
slim TrackedInstance view) and keeps them by id for the pass; that is the figure.
``records`` measures the same rows as full InstanceRecords (``list()``), for the note.

Run as a script it is the child: ``bench_memory.py gpufsm DB``, ``bench_memory.py
records DB`` or ``bench_memory.py transitions N``; it prints one JSON object.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MemoryResult", "measure_gpufsm", "measure_records", "measure_transitions"]


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux without psutil: resident pages from /proc
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryResult:
    measured: int  # instances actually built
    rss_delta: int  # bytes, for ``measured`` instances
    seconds: float  # to build them

    def extrapolated(self, to: int) -> float:
        """Bytes for ``to`` instances, assuming cost grows linearly with count."""
        return self.rss_delta * to / self.measured


def _child(*args: str) -> MemoryResult:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child {args} failed:\n{out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return MemoryResult(data["measured"], data["rss_delta"], data["seconds"])


def measure_gpufsm(db: Path) -> MemoryResult:
    """Every live row of ``db`` as the engine tracks it (list_tracked), held by id."""
    return _child("gpufsm", str(db))


def measure_records(db: Path) -> MemoryResult:
    """Every row of ``db`` as full InstanceRecords (list()), held by id."""
    return _child("records", str(db))


def measure_transitions(n: int) -> MemoryResult:
    """``n`` transitions Machines, one per instance, each with its own small model."""
    return _child("transitions", str(n))


def _gpufsm_child(db: str, *, records: bool) -> dict[str, Any]:
    from gpufsm.machines import InstanceState
    from gpufsm.store import SqlInstanceStore

    watched = [s for s in InstanceState if s is not InstanceState.TERMINATED]
    store = SqlInstanceStore(f"sqlite:///{db}")

    def load() -> Any:
        return store.list() if records else store.list_tracked(states=watched)

    store.list(provider="warm-up")  # compile the queries, open the connection, load modules
    store.list_tracked(provider="warm-up")
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    held = {r.id: r for r in load()}  # what an engine keeps: rows by id
    took = time.perf_counter() - start
    gc.collect()
    after = _rss()
    return {"measured": len(held), "rss_delta": after - before, "seconds": took}


class _Model:
    """A per-instance model: transitions binds trigger methods onto it, so no slots."""

    def __init__(self, instance_id: str) -> None:
        self.id = instance_id


def _transitions_child(n: int) -> dict[str, Any]:
    from transitions import Machine

    from gpufsm.machines import TRANSITIONS, EdgeKind, InstanceState

    def allowed(event_data: Any) -> bool:
        return True

    edges = [
        {"trigger": t.event.value, "source": [s.value for s in t.sources],
         "dest": t.dest.value,
         "conditions": [allowed] if t.kind is EdgeKind.COMMAND else []}
        for t in TRANSITIONS if t.sources
    ]
    states = [s.value for s in InstanceState]

    def build(i: int) -> Machine:
        # the cheapest per-instance machine: same table, no auto transitions (the
        # default would add 81 more edges to each), events passed as EventData
        return Machine(model=_Model(f"inst-{i}"), states=states, transitions=edges,
                       initial="RUNNING", auto_transitions=False, send_event=True)

    build(-1)
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    held = [build(i) for i in range(n)]
    took = time.perf_counter() - start
    gc.collect()
    after = _rss()
    return {"measured": len(held), "rss_delta": after - before, "seconds": took}


def _main(argv: list[str]) -> int:
    kind, arg = argv
    if kind in ("gpufsm", "records"):
        result = _gpufsm_child(arg, records=kind == "records")
    else:
        result = _transitions_child(int(arg))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
