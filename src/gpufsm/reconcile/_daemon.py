"""The daemon loop: a pass every interval (with jitter), stopped cleanly by a signal.

SIGTERM and SIGINT set a flag; the current pass finishes its current instance's step
and the loop exits, so a deploy never kills the process between "TERMINATING
committed" and "terminate called".
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from gpufsm.reconcile._pass import Reconciler
from gpufsm.reconcile._report import PassReport

__all__ = ["run_forever"]

log = logging.getLogger("gpufsm.reconcile")


def run_forever(reconciler: Reconciler, *, interval: float = 30.0, jitter: float = 0.1,
                stop: threading.Event | None = None, max_passes: int | None = None,
                on_pass: Callable[[PassReport], None] | None = None,
                install_signals: bool = True, rng: random.Random | None = None) -> int:
    """Run passes until stopped; return the number of passes run.

    ``jitter`` spreads daemons sharing a database (a fraction of the interval).
    """
    stop = stop or threading.Event()
    rng = rng or random.Random()
    previous: dict[signal.Signals, Any] = {}

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the current pass, then exiting", signum)
        stop.set()

    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _stop)
    passes = 0
    try:
        while not stop.is_set():
            report = reconciler.run_once()
            passes += 1
            log.info("pass %d: %d instances, %d changes, %d problems, %.2fs", passes,
                     report.instances_seen, len(report.changes), len(report.problems),
                     report.duration)
            if on_pass is not None:
                on_pass(report)
            if max_passes is not None and passes >= max_passes:
                break
            stop.wait(max(0.0, interval * (1 + rng.uniform(-jitter, jitter))))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            released = reconciler.release()
            if released:
                log.info("released %d leases", released)
        except Exception:  # a failed release only makes others wait for expiry
            log.exception("releasing leases failed; they expire on their own")
    return passes
