"""The daemon loop: a pass every interval (with jitter), stopped cleanly by a signal.

SIGTERM and SIGINT set a flag; the current pass finishes its current instance's step
and the loop exits, so a deploy never kills the process between "TERMINATING
committed" and "terminate called".

Its log is meant to be read by a person who runs it for weeks (``PassLog``): one INFO
line per pass with its counts, one per change, and a problem once — when it appears or
changes, and again when it clears — instead of the same warning every 30 seconds.
"""

from __future__ import annotations

import logging
import random
import re
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from gpufsm.reconcile._pass import Reconciler
from gpufsm.reconcile._report import PassReport, Problem

__all__ = ["PassLog", "run_forever"]

log = logging.getLogger("gpufsm.reconcile")

#: The provider's request id in an error's text (``ProviderError.__str__``): new on every
#: call, so it must not make an unchanged problem look new.
_REQUEST_ID = re.compile(r" \(request [^)]*\)")

#: Figures in an alert's text (dollars spent, burn, hours left, a clock time): they move
#: every pass while the alert stands, which must not log it anew each pass.
_FIGURES = re.compile(r"\d[\d,.:\-]*")

_ProblemKey = tuple[str, str, str | None, str]


def _key(problem: Problem) -> _ProblemKey:
    message = _REQUEST_ID.sub("", problem.message)
    if problem.kind == "alert":
        message = _FIGURES.sub("#", message)
    return (problem.kind, problem.provider, problem.instance_id, message)


def _describe(problem: Problem) -> str:
    about = f" {problem.instance_id}" if problem.instance_id else ""
    return f"{problem.kind} {problem.provider}{about}: {problem.message}"


class PassLog:
    """Logs each pass report, remembering the problems still open between passes.

    - INFO, every pass: ``pass N: changes=… problems=… (new=… cleared=…) watched=…``;
    - INFO, one line per change (what moved, the event, and why);
    - WARNING, a problem the previous pass did not report (a changed message counts as
      a new problem, and the old one as cleared);
    - INFO, ``cleared: …`` for a problem the previous pass reported and this one did not.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._open: dict[_ProblemKey, Problem] = {}
        self.passes = 0

    @property
    def open_problems(self) -> list[Problem]:
        """The problems the last pass reported."""
        return list(self._open.values())

    def __call__(self, report: PassReport) -> None:
        self.passes += 1
        now = {_key(p): p for p in report.problems}
        new = [p for k, p in now.items() if k not in self._open]
        cleared = [p for k, p in self._open.items() if k not in now]
        self._open = now
        self._log.info("pass %d: changes=%d problems=%d (new=%d cleared=%d) watched=%d "
                       "in %.2fs", self.passes, len(report.changes), len(now), len(new),
                       len(cleared), report.instances_seen, report.duration)
        for c in report.changes:
            why = f": {c.why}" if c.why else ""
            self._log.info("change %s %s: %s -> %s (%s)%s", c.provider, c.instance_id,
                           c.from_state or "(new)", c.to_state, c.event, why)
        for p in new:
            self._log.warning("problem %s", _describe(p))
        for p in cleared:
            self._log.info("cleared: %s", _describe(p))


def run_forever(reconciler: Reconciler, *, interval: float = 30.0, jitter: float = 0.1,
                stop: threading.Event | None = None, max_passes: int | None = None,
                on_pass: Callable[[PassReport], None] | None = None,
                install_signals: bool = True, rng: random.Random | None = None,
                pass_log: PassLog | None = None) -> int:
    """Run passes until stopped; return the number of passes run.

    ``jitter`` spreads daemons sharing a database (a fraction of the interval). Each
    pass is logged by ``pass_log`` (a fresh :class:`PassLog` by default), then handed to
    ``on_pass``.
    """
    stop = stop or threading.Event()
    rng = rng or random.Random()
    pass_log = pass_log or PassLog()
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
            pass_log(report)
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
