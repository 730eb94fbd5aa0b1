"""Timing, figures and the machine description shared by every benchmark row.

Why alternate and pair: this is a 2-core machine shared with test runs and databases,
so a figure measured a minute before its baseline compares two different machines.
Every throughput figure is measured in rounds that run the subject and the baseline
back to back (in alternating order, so a slow-down during the run hurts both equally),
and the ratio is the median of the per-round ratios, not a ratio of two medians.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "CPU",
    "WALL",
    "Clock",
    "Figure",
    "Machine",
    "Pair",
    "Verdict",
    "Workload",
    "calibrate",
    "describe_machine",
    "load_average",
    "paired_rates",
]

#: Runs ``n`` operations. Returns nothing: the caller only times it.
Workload = Callable[[int], None]

Verdict = Literal["PASS", "FAIL", "SKIP", "N/A"]


@dataclass(frozen=True)
class Figure:
    """One row of the results table, already formatted for people.

    ``ratio`` is subject / baseline for rates and baseline-free rows leave it None;
    ``verdict`` is decided by the row itself because targets differ in kind (a ratio
    floor, an absolute ceiling in MB or seconds).
    """

    section: str
    name: str
    value: str
    baseline_name: str
    baseline: str
    ratio: str
    target: str
    verdict: Verdict
    note: str = ""


@dataclass(frozen=True)
class Pair:
    """Paired throughput: medians of each side and the median of per-round ratios."""

    subject_rate: float
    baseline_rate: float
    ratio: float
    ratio_low: float
    ratio_high: float
    rounds: int

    @property
    def spread(self) -> str:
        return f"ratio {self.ratio_low:.2f}-{self.ratio_high:.2f} over {self.rounds} rounds"


#: A clock: wall time for work that waits on a disk or a server, this process's CPU time
#: for pure computation, which a neighbour's load then cannot inflate.
Clock = Callable[[], float]
WALL: Clock = time.perf_counter
CPU: Clock = time.process_time


def _timed(work: Workload, n: int, clock: Clock = WALL) -> float:
    # Collect first so neither side pays for the other's garbage; the collector stays on
    # while timing, because a library that allocates more should pay for it as it would
    # in a real process.
    gc.collect()
    start = clock()
    work(n)
    return clock() - start


def calibrate(work: Workload, seconds: float, *, start: int = 16, step: int = 1,
              clock: Clock = WALL) -> int:
    """The operation count that makes one call of ``work`` last about ``seconds``.

    ``step`` rounds the count (e.g. to whole passes over a cycle of events), so a
    workload can insist on ending where it started.
    """
    n = max(step, start - start % step)
    while True:
        elapsed = _timed(work, n, clock)
        if elapsed >= seconds / 4 or n >= 1 << 30:
            break
        n *= 4
    wanted = int(n * seconds / max(elapsed, 1e-9))
    return max(step, wanted - wanted % step)


def paired_rates(
    subject: Workload,
    baseline: Workload,
    *,
    seconds: float,
    rounds: int,
    step: int = 1,
    baseline_step: int | None = None,
    clock: Clock = WALL,
    slices: int = 1,
) -> Pair:
    """Operations per second of ``subject`` and ``baseline``, measured in alternation.

    Each side is calibrated on its own (they may differ ten-fold, and a batched baseline
    needs whole batches while the subject does not), then ``rounds`` rounds run both,
    swapping which goes first every round. ``clock=CPU`` for in-memory work: on a
    shared machine, time spent descheduled is the neighbours', not the library's.

    ``slices`` > 1 cuts each side's share of a round into that many pieces (whole
    ``step``s each), run turn about — subject, baseline, subject, baseline … — and
    summed per side. Why: CPU time still varies with what the neighbours do to the
    shared caches and cores, and a round of one side then one of the other samples two
    different neighbourhoods; pieces taken turn about sample the same one. Each side
    does the same work as with one slice, in the same rounds: only the order is finer.
    """
    b_step = step if baseline_step is None else baseline_step
    sn = calibrate(subject, seconds, step=step, clock=clock)
    bn = calibrate(baseline, seconds, step=b_step, clock=clock)
    s_piece = max(step, sn // slices - sn // slices % step)
    b_piece = max(b_step, bn // slices - bn // slices % b_step)
    s_rates: list[float] = []
    b_rates: list[float] = []
    for r in range(rounds):
        s_time = b_time = 0.0
        for _ in range(slices):
            if r % 2 == 0:
                s_time += _timed(subject, s_piece, clock)
                b_time += _timed(baseline, b_piece, clock)
            else:
                b_time += _timed(baseline, b_piece, clock)
                s_time += _timed(subject, s_piece, clock)
        s_rates.append(s_piece * slices / s_time)
        b_rates.append(b_piece * slices / b_time)
    ratios = [s / b for s, b in zip(s_rates, b_rates, strict=True)]
    return Pair(
        subject_rate=statistics.median(s_rates),
        baseline_rate=statistics.median(b_rates),
        ratio=statistics.median(ratios),
        ratio_low=min(ratios),
        ratio_high=max(ratios),
        rounds=rounds,
    )


@dataclass(frozen=True)
class Machine:
    """What the numbers were measured on; a ratio means little without it."""

    cpu: str
    cores: int
    ram_gb: float
    python: str
    platform: str
    date: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    packages: dict[str, str] = field(default_factory=dict)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().total) / 2**30
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages / 2**30


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def describe_machine() -> Machine:
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        ram_gb=_ram_gb(),
        python=sys.version.split()[0] + f" ({platform.python_implementation()})",
        platform=platform.platform(),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        load_before=load_average(),
        packages={
            d: _version(d)
            for d in ("gpufsm", "transitions", "python-statemachine", "SQLAlchemy",
                      "psycopg", "psutil")
        },
    )
