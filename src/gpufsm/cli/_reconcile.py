"""``gpufsm reconcile``: one pass printed for a person, or the daemon loop.

The daemon logs to stderr: one INFO line per pass and one per change, a problem once
(``gpufsm.reconcile._daemon.PassLog``). The libraries under it stay at WARNING: httpx
logs every request at INFO, the seam's retry lines are counted by the metrics, and the
``transitions`` logger at INFO costs throughput (DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

from gpufsm.adapters import HasSeam
from gpufsm.cli._common import at_stake, close_adapters
from gpufsm.cli._providers import build_adapters
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.fleet import Fleet
from gpufsm.notify import Metrics, Webhook, WebhookDispatcher
from gpufsm.reconcile import (
    OrphanPolicy,
    PassReport,
    ReconcileConfig,
    Reconciler,
    insufficient_credit_emergency,
    run_forever,
)
from gpufsm.store import SqlInstanceStore, sqlite_file

__all__ = ["QUIET_LOGGERS", "daemon_logging", "print_report", "run_reconcile"]

log = logging.getLogger("gpufsm.reconcile")

#: Loggers held at WARNING while the daemon runs: at INFO they would write a line per
#: HTTP request (httpx, httpcore), per retry (gpufsm.http) or per transition.
QUIET_LOGGERS = ("httpx", "httpcore", "gpufsm.http", "transitions")


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
                  console: Console, metrics_port: int | None = None) -> int:
    settings = Settings()
    try:
        policy = OrphanPolicy(orphans)
    except ValueError:
        raise ValidationError("--orphans", "one of report, adopt, terminate",
                              value=orphans) from None
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
    fleet = Fleet(store, adapters, actor=actor, webhooks=hooks)
    dispatcher = WebhookDispatcher(store, hooks) if hooks else None
    config = ReconcileConfig(orphans=policy, lease_ttl=max(120.0, 5 * every) if shared else None)
    reconciler = Reconciler(fleet, config, policies=[insufficient_credit_emergency()],
                            actor=actor, dispatcher=dispatcher)
    metrics = _metrics(fleet, metrics_port) if metrics_port is not None else None
    try:
        with store.daemon_lock():
            return _run(reconciler, once=once, interval=every, as_json=as_json,
                        console=console, metrics=metrics)
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
         max_passes: int | None = None) -> int:
    if once:
        report = reconciler.run_once()
        if metrics is not None:
            metrics.on_pass(report)
        if as_json:
            sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        else:
            print_report(report, console)
        return 0 if report.ok else 1

    with daemon_logging():  # run_forever logs each pass (PassLog)
        run_forever(reconciler, interval=interval, max_passes=max_passes,
                    on_pass=metrics.on_pass if metrics is not None else None)
    return 0
