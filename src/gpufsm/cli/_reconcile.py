"""``gpufsm reconcile``: one pass printed for a person, or the daemon loop.

The daemon logs to stderr: one INFO line per pass and one per change, a problem once
(``gpufsm.reconcile._daemon.PassLog``). The libraries under it stay at WARNING: httpx
logs every request at INFO, the seam's retry lines are counted by the metrics, and the
``transitions`` logger at INFO costs throughput (DESIGN.md).

Policies come from flags (``--max-lifetime``, ``--idle-timeout``, ``--hourly-budget``,
``--budget``), parsed before anything is opened so a bad value is one line and exit 2;
``insufficient_credit_emergency`` is always on. The active ones are said once: a log
line when the daemon starts, a note at the head of a ``--once`` report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from gpufsm.adapters import HasSeam
from gpufsm.cli._common import at_stake, close_adapters
from gpufsm.cli._providers import build_adapters
from gpufsm.clock import Clock, SystemClock
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.fleet import Fleet
from gpufsm.notify import Metrics, Webhook, WebhookDispatcher
from gpufsm.reconcile import (
    OrphanPolicy,
    PassReport,
    Policy,
    ReconcileConfig,
    Reconciler,
    SpendBudget,
    hourly_budget,
    idle_timeout,
    insufficient_credit_emergency,
    max_lifetime,
    run_forever,
    spend_budget,
)
from gpufsm.reconcile._budget import WINDOWS
from gpufsm.store import SqlInstanceStore, sqlite_file

__all__ = ["CLOCK", "QUIET_LOGGERS", "PolicyFlags", "daemon_logging", "parse_budget",
           "parse_duration", "policies_from_flags", "print_report", "run_reconcile"]

log = logging.getLogger("gpufsm.reconcile")

#: Loggers held at WARNING while the daemon runs: at INFO they would write a line per
#: HTTP request (httpx, httpcore), per retry (gpufsm.http) or per transition.
QUIET_LOGGERS = ("httpx", "httpcore", "gpufsm.http", "transitions")

#: Where the reconciler's "now" comes from; tests put a FakeClock here.
CLOCK: Clock = SystemClock()

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_EXAMPLE = "e.g. 90s, 30m, 6h, 2d or plain seconds"


def parse_duration(flag: str, text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``6h``, ``2d`` or plain seconds; more than 0."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else 0.0
    if seconds <= 0:
        raise ValidationError(flag, f"a duration above 0 ({_DURATION_EXAMPLE}), got {text!r}",
                              value=text)
    return seconds


def _dollars(flag: str, text: str, example: str, typed: str | None = None) -> float:
    """A dollar amount above 0 (a leading ``$`` allowed); ``typed``: the whole value the
    amount is part of, for the error line."""
    try:
        value = float(text.strip().removeprefix("$"))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        shown = text if typed is None else typed
        raise ValidationError(flag, f"dollars above 0 ({example}), got {shown!r}",
                              value=shown)
    return value


def parse_budget(text: str, alert_at: float) -> SpendBudget:
    """``--budget CAP/WINDOW``: ``100/day``, ``2000/month``, ``25/run``."""
    example = "e.g. 100/day, 2000/month or 25/run"
    cap, slash, window = text.partition("/")
    window = window.strip().lower()
    if not slash or window not in WINDOWS:
        raise ValidationError("--budget", f"CAP/WINDOW with a window of "
                              f"{', '.join(WINDOWS)} ({example}), got {text!r}", value=text)
    return spend_budget(_dollars("--budget", cap, example, text), window, alert_at=alert_at)


def _fraction(flag: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValidationError(flag, f"a fraction of the cap above 0 and at most 1 "
                              f"(e.g. 0.8), got {text!r}", value=text)
    return value


@dataclass(frozen=True)
class PolicyFlags:
    """The policy flags of ``gpufsm reconcile`` as typed (None / empty: not given)."""

    max_lifetime: str | None = None
    idle_timeout: str | None = None
    hourly_budget: str | None = None
    budgets: Sequence[str] = ()
    budget_alert: str = "0.8"


def policies_from_flags(flags: PolicyFlags) -> list[tuple[str, Policy]]:
    """The policies the flags ask for, each with the label the CLI shows; the
    insufficient-credit emergency first, always. A bad value raises ValidationError
    naming its flag."""
    chosen: list[tuple[str, Policy]] = [("insufficient_credit_emergency",
                                         insufficient_credit_emergency())]
    if flags.max_lifetime is not None:
        seconds = parse_duration("--max-lifetime", flags.max_lifetime)
        chosen.append((f"max_lifetime {seconds:g}s", max_lifetime(seconds)))
    if flags.idle_timeout is not None:
        seconds = parse_duration("--idle-timeout", flags.idle_timeout)
        chosen.append((f"idle_timeout {seconds:g}s", idle_timeout(seconds)))
    if flags.hourly_budget is not None:
        dollars = _dollars("--hourly-budget", flags.hourly_budget, "e.g. 25 for $25/h")
        chosen.append((f"hourly_budget ${dollars:.2f}/h", hourly_budget(dollars)))
    alert_at = _fraction("--budget-alert", flags.budget_alert)
    windows: set[str] = set()
    for text in flags.budgets:
        budget = parse_budget(text, alert_at)
        if budget.window in windows:
            raise ValidationError("--budget", f"one budget per window: {budget.window} is "
                                  f"given twice (e.g. --budget 100/day --budget 2000/month)",
                                  value=text)
        windows.add(budget.window)
        chosen.append((str(budget), budget))
    return chosen


@contextmanager
def daemon_logging() -> Iterator[None]:
    """INFO to stderr for gpufsm's own lines, WARNING for the chatty ones; restored after.

    ``basicConfig`` does nothing when the root logger already has a handler (an
    embedding application's, or pytest's), so theirs is kept.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    quiet = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(quiet, saved, strict=True):
            lg.setLevel(level)


def print_report(report: PassReport, console: Console) -> None:
    changes = Table("instance", "provider", "transition", "event", "why",
                    title=f"reconcile pass: {len(report.changes)} change(s)")
    for c in report.changes:
        changes.add_row(c.instance_id[:8], c.provider,
                        f"{c.from_state or '(new)'} → {c.to_state}", c.event, c.why)
    console.print(changes)
    if report.problems:
        problems = Table("kind", "provider", "instance", "message", title="problems")
        for p in report.problems:
            problems.add_row(p.kind, p.provider, (p.instance_id or "")[:8], p.message)
        console.print(problems)
    for note in report.notes:
        console.print(note)
    listed = ", ".join(f"{k}={v}" for k, v in sorted(report.listings.items())) or "none"
    console.print(f"{report.instances_seen} instances watched; listed: {listed}; "
                  f"{report.duration:.2f}s")


def run_reconcile(*, once: bool, interval: float | None, providers: list[str] | None,
                  orphans: str, database_url: str | None, as_json: bool,
                  console: Console, metrics_port: int | None = None,
                  policy_flags: PolicyFlags | None = None) -> int:
    settings = Settings()
    try:
        policy = OrphanPolicy(orphans)
    except ValueError:
        raise ValidationError("--orphans", "one of report, adopt, terminate",
                              value=orphans) from None
    policies = policies_from_flags(policy_flags or PolicyFlags())
    url = database_url or settings.database_url
    try:
        adapters = build_adapters(settings, providers)
    except ValidationError:
        # No key set at all: a usage error, unless rows in the database may bill. Then
        # the pass runs without adapters and reports each of their providers as blind.
        # (A SQLite file that is not there holds no rows: it is not created to learn so.)
        if providers or ((path := sqlite_file(url)) is not None and not path.exists()):
            raise
        adapters = []
    store = SqlInstanceStore(url, sqlite_synchronous=settings.sqlite_synchronous)
    if not adapters and not at_stake(store, None):
        store.close()
        build_adapters(settings, None)  # raises: no provider configured, naming the keys
    every = interval or settings.reconcile_interval
    # On a shared database each daemon leases its rows; the owner must be unique.
    shared = store.engine.dialect.name != "sqlite"
    actor = f"reconciler@{socket.gethostname()}:{os.getpid()}" if shared else "reconciler"
    hooks = [Webhook(url, secret=settings.webhook_secret) for url in settings.webhook_urls]
    fleet = Fleet(store, adapters, actor=actor, webhooks=hooks, clock=CLOCK)
    dispatcher = WebhookDispatcher(store, hooks) if hooks else None
    config = ReconcileConfig(orphans=policy, lease_ttl=max(120.0, 5 * every) if shared else None)
    reconciler = Reconciler(fleet, config, policies=[p for _, p in policies],
                            actor=actor, dispatcher=dispatcher)
    metrics = _metrics(fleet, metrics_port) if metrics_port is not None else None
    try:
        with store.daemon_lock():
            return _run(reconciler, once=once, interval=every, as_json=as_json,
                        console=console, metrics=metrics,
                        policies=[label for label, _ in policies])
    finally:
        if dispatcher is not None:
            dispatcher.close()
        close_adapters(adapters)
        store.close()


def _metrics(fleet: Fleet, port: int) -> Metrics:
    """Hook metrics onto the engine's listener and every adapter's HTTP seam, and serve."""
    metrics = Metrics()
    fleet.subscribe(metrics.on_transition)
    for adapter in fleet.adapters.values():
        if isinstance(adapter, HasSeam):
            adapter.seam.observers.append(metrics.on_call)
    metrics.serve(port)
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    return metrics


def _run(reconciler: Reconciler, *, once: bool, interval: float, as_json: bool,
         console: Console, metrics: Metrics | None = None,
         max_passes: int | None = None, policies: Sequence[str] = ()) -> int:
    said = f"policies: {', '.join(policies)}" if policies else None
    if once:
        report = reconciler.run_once()
        if said is not None:
            report.notes.insert(0, said)
        if metrics is not None:
            metrics.on_pass(report)
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        else:
            print_report(report, console)
        return 0 if report.ok else 1

    with daemon_logging():  # run_forever logs each pass (PassLog)
        if said is not None:
            log.info("%s", said)
        run_forever(reconciler, interval=interval, max_passes=max_passes,
                    on_pass=metrics.on_pass if metrics is not None else None)
    return 0
