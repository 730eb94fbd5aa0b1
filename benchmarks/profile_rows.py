"""Where the time and memory of a row go, so a missed target names its cause.

    python benchmarks/profile_rows.py load       # pyinstrument over store.list_tracked(), 100k
    python benchmarks/profile_rows.py memory     # bytes per InstanceRecord, field by field
    python benchmarks/profile_rows.py persist    # pyinstrument over store.transition()
    python benchmarks/profile_rows.py engine     # pyinstrument over machines.check()
    python benchmarks/profile_rows.py pass       # one 1%-drift pass, in-process cloud, 100k
    python benchmarks/profile_rows.py pass-http  # one 1%-drift pass over the emulator, 10k
    python benchmarks/profile_rows.py load --rows 10000

Separate from run.py because a profiler slows what it watches: figures come from run.py,
explanations from here. ``load`` also times store.list() (full records) with the cyclic
garbage collector on and paused: the collector is the largest single cost pyinstrument
cannot show by name, which is why the store pauses it while it builds lists.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from bench_engine import CYCLE, policy_guard
from bench_store import WATCHED, make_records, seed

from gpufsm.machines import Capabilities, InstanceState, check
from gpufsm.store import InstanceRecord, Move, SqlInstanceStore


def _profiled(label: str, fn: Callable[[], object]) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("pyinstrument is not installed: pip install -e '.[bench]'")
    profiler = Profiler(interval=0.0005)
    profiler.start()
    fn()
    profiler.stop()
    print(f"==== {label}")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def _store_with(rows: int, tmp: Path) -> SqlInstanceStore:
    store = SqlInstanceStore(f"sqlite:///{tmp / 'profile.db'}")
    seed(store, make_records(rows))
    return store


def profile_load(rows: int, tmp: Path) -> None:
    store = _store_with(rows, tmp)
    store.list_tracked(provider="warm-up")
    _profiled(f"store.list_tracked() over {rows:,} rows",
              lambda: store.list_tracked(states=WATCHED))
    for paused in (False, True):
        # the store pauses the collector itself; this shows what that saves
        with _collector(on=not paused):
            start = time.perf_counter()
            store.list()
            took = time.perf_counter() - start
        print(f"store.list() with the garbage collector {'paused' if paused else 'on'}: "
              f"{took:.2f} s")
    store.close()


class _collector:  # noqa: N801 - reads as a statement
    """Force the collector on or off, also inside the store's own pause."""

    def __init__(self, *, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        import gpufsm.store._reads as reads

        self._saved = reads.gc_paused
        if self.on:
            reads.gc_paused = contextlib.nullcontext  # type: ignore[assignment]
        else:
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        import gpufsm.store._reads as reads

        reads.gc_paused = self._saved  # type: ignore[assignment]
        gc.enable()


def profile_pass(rows: int, tmp: Path, *, http: bool = False) -> None:
    from bench_reconcile import build_world

    from gpufsm.reconcile import ReconcileConfig, Reconciler

    n = min(rows, 10_000) if http else rows
    world = build_world(n, url=f"sqlite:///{tmp / 'pass.db'}", http=http)
    try:
        reconciler = Reconciler(world.fleet("profile"), ReconcileConfig(), actor="profile")
        where = "the Lambda emulator over loopback" if http else "the in-process cloud"
        _profiled(f"one reconcile pass over {n:,} instances (1% drift) on {where}",
                  reconciler.run_once)
    finally:
        world.close()


def _deep_size(obj: object, seen: set[int]) -> int:
    if id(obj) in seen or obj is None or isinstance(obj, (bool, Enum)):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        size += sum(_deep_size(v, seen) for v in obj)
    return size


def profile_memory(rows: int, tmp: Path) -> None:
    """Object sizes, not RSS: which fields make up a record, biggest first."""
    store = _store_with(rows, tmp)
    records: Sequence[InstanceRecord] = store.list()
    seen: set[int] = set()
    per_field: dict[str, int] = {"(the record object itself)": 0}
    for r in records:
        per_field["(the record object itself)"] += sys.getsizeof(r)
        for f in fields(r):
            per_field[f.name] = per_field.get(f.name, 0) + _deep_size(getattr(r, f.name), seen)
    n = len(records)
    total = sum(per_field.values())
    print(f"bytes per InstanceRecord from store.list(), mean over {n:,} rows "
          "(sys.getsizeof, shared objects counted once; RSS adds allocator overhead):")
    for name, size in sorted(per_field.items(), key=lambda kv: -kv[1]):
        if size:
            print(f"  {name:28s} {size / n:8.0f} B  {100 * size / total:5.1f} %")
    print(f"  {'total':28s} {total / n:8.0f} B  -> {total / n * 100_000 / 1e6:.0f} MB "
          "for 100k")
    store.close()


def profile_persist(rows: int, tmp: Path) -> None:
    count = min(rows, 2000)
    store = SqlInstanceStore(f"sqlite:///{tmp / 'persist.db'}")
    records = make_records(count, prefix="p", states=(InstanceState.RUNNING,))
    seed(store, records)

    def run() -> None:
        from gpufsm.machines import EdgeKind, Event

        for r in records:
            store.transition(Move(r.id, r.version, r.state, InstanceState.STARTING,
                                  Event.RESTART, EdgeKind.COMMAND),
                             actor="profile", at=datetime.now(UTC))

    _profiled(f"{count:,} x SqlInstanceStore.transition() on SQLite (WAL, synchronous=FULL)",
              run)
    store.close()


def profile_engine(rows: int, _tmp: Path) -> None:
    caps, guards = Capabilities(), (policy_guard,)
    state = InstanceState.RUNNING

    def run() -> None:
        nonlocal state
        for _ in range(rows // len(CYCLE)):
            for event in CYCLE:
                state = check("inst", state, event, capabilities=caps, guards=guards)

    _profiled(f"{rows:,} x gpufsm.machines.check()", run)


PROFILES: dict[str, Callable[[int, Path], Any]] = {
    "load": profile_load, "memory": profile_memory, "persist": profile_persist,
    "engine": profile_engine, "pass": profile_pass,
    "pass-http": lambda rows, tmp: profile_pass(rows, tmp, http=True),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/profile_rows.py",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("row", choices=sorted(PROFILES))
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpufsm-profile-") as tmp:
        PROFILES[args.row](args.rows, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
