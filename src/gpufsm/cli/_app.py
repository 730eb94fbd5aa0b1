"""Commands. Each one is a thin shell over the library; the logic lives below."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gpufsm.config import Settings
from gpufsm.errors import GpufsmError
from gpufsm.machines import TRANSITIONS, to_dot, to_mermaid

if TYPE_CHECKING:
    from gpufsm.store import InstanceRecord, SqlInstanceStore, TransitionRecord

__all__ = ["app", "main"]

app = typer.Typer(
    name="gpufsm",
    help="Drive rented GPU instances through a persisted state machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", envvar="GPUFSM_DATABASE_URL",
                 help="SQLAlchemy URL (default: SQLite in the user data directory)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _store(database_url: str | None, *, migrate: bool | None = None) -> SqlInstanceStore:
    from gpufsm.store import SqlInstanceStore

    settings = Settings()
    return SqlInstanceStore(database_url or settings.database_url, migrate=migrate,
                            sqlite_synchronous=settings.sqlite_synchronous)


@app.command()
def demo(
    instances: Annotated[int, typer.Option(min=1, max=50, help="Fleet size.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the simulated cloud.")] = 7,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Where to keep the demo's rows (default: a fresh SQLite file "
        "beside the embedded default, so real rows are never touched).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Drive a small fleet through its whole life on the simulated cloud."""
    from gpufsm.cli._demo import run_demo

    ok = run_demo(instances=instances, seed=seed, database_url=database_url,
                  console=console, quiet=quiet)
    raise typer.Exit(0 if ok else 1)


@app.command()
def diagram(
    fmt: Annotated[str, typer.Option("--format", help="mermaid or dot.")] = "mermaid",
) -> None:
    """Print the state diagram, generated from the transition table."""
    if fmt == "mermaid":
        sys.stdout.write(to_mermaid())
    elif fmt == "dot":
        sys.stdout.write(to_dot())
    else:
        err.print(f"--format: expected mermaid or dot, got {fmt!r}")
        raise typer.Exit(2)


@app.command()
def transitions(as_json: JsonOpt = False) -> None:
    """Print the transition table as data: event, sources, destination, kind, why."""
    if as_json:
        rows = [
            {"event": t.event.value, "sources": [s.value for s in t.sources] or ["(new)"],
             "dest": t.dest.value, "kind": t.kind.value, "comment": t.comment}
            for t in TRANSITIONS
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table("event", "from", "to", "kind", "why", title="gpufsm transition table")
    for t in TRANSITIONS:
        table.add_row(t.event.value, ", ".join(s.value for s in t.sources) or "(new)",
                      t.dest.value, t.kind.value, t.comment)
    console.print(table)


@app.command()
def instances(database_url: DatabaseOpt = None, as_json: JsonOpt = False,
              provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
              ) -> None:
    """List the instances in the database."""
    store = _store(database_url)
    try:
        records = store.list(provider=provider)
    finally:
        store.close()
    if as_json:
        sys.stdout.write(json.dumps([_record_json(r) for r in records], indent=2) + "\n")
        return
    table = Table("id", "name", "provider", "state", "type", "region", "$/h", "ip", "billable")
    for r in records:
        table.add_row(r.id[:8], r.name or "", r.provider, r.state.value, r.instance_type or "",
                      r.region or "", f"{r.price_per_hour:.2f}" if r.price_per_hour else "",
                      r.ip or "", "yes" if r.billable else "no")
    console.print(table)


@app.command()
def history(instance_id: str, database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """The transitions of one instance, with times, actors, reasons, raw statuses."""
    store = _store(database_url)
    try:
        record = _resolve(store, instance_id)
        rows = store.history(record.id)
    finally:
        store.close()
    if as_json:
        sys.stdout.write(json.dumps([{
            "version": h.version, "at": h.at.isoformat(),
            "from": h.from_state.value if h.from_state else None, "to": h.to_state.value,
            "event": h.event.value, "kind": h.kind.value, "actor": h.actor, "reason": h.reason,
            "raw_status": h.raw_status} for h in rows], indent=2) + "\n")
        return
    console.print(_history_table(record.id, rows))


@app.command()
def reconcile(
    once: Annotated[bool, typer.Option("--once", help="One pass, print it, exit.")] = False,
    interval: Annotated[float | None, typer.Option(
        min=0.0, help="Seconds between passes (default GPUFSM_RECONCILE_INTERVAL or 30).")] = None,
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", "-p", help="Only these providers (repeatable).")] = None,
    orphans: Annotated[str, typer.Option(
        help="Instances with our tag and no row: report, adopt or terminate.")] = "report",
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Keep the database true to the providers; terminate what should not bill.

    Exit status with --once: 0 when the pass finished without instance errors or
    alerts, 1 otherwise. The loop exits 0 on SIGTERM/SIGINT after finishing its step.
    """
    from gpufsm.cli._reconcile import run_reconcile

    code = run_reconcile(once=once, interval=interval, providers=provider, orphans=orphans,
                         database_url=database_url, as_json=as_json, console=console)
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply schema migrations (automatic for SQLite; explicit for shared PostgreSQL)."""
    store = _store(database_url, migrate=True)
    try:
        from gpufsm.store import current_revision

        console.print(f"schema at revision {current_revision(store.engine)}")
    finally:
        store.close()


@app.command()
def emulator(
    *,
    dialect: Annotated[str, typer.Option(help="Provider dialect: lambda, vastai, novita or "
                                         "runpod.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless "
                                      "--allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 0,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", help="Require this bearer key on the provider API (default: any).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated cloud.")] = 0,
    real_time: Annotated[bool, typer.Option(
        "--real-time/--fake-clock", help="Real time with short boots, or a clock that "
        "moves only through POST /_emulator/clock.")] = True,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Listen on a non-loopback address (plain HTTP, keyless "
        "admin API: anyone who reaches it can drive it).")] = False,
) -> None:
    """Serve a provider's HTTP API over a simulated cloud, with a fault-injection admin API."""
    from gpufsm.cli._emulator import run_emulator

    raise typer.Exit(run_emulator(dialect=dialect, host=host, port=port, api_key=api_key,
                                  seed=seed, real_time=real_time, allow_remote=allow_remote))


def _resolve(store: SqlInstanceStore, instance_id: str) -> InstanceRecord:
    """Accept a full id or a unique prefix (the tables show 8 characters)."""
    from gpufsm.errors import InstanceNotFound

    try:
        return store.get(instance_id)
    except InstanceNotFound:
        matches = [r for r in store.list() if r.id.startswith(instance_id)]
        if len(matches) == 1:
            return matches[0]
        raise


def _history_table(instance_id: str, rows: Sequence[TransitionRecord]) -> Table:
    table = Table("v", "at", "from", "to", "event", "kind", "actor", "raw", "reason",
                  title=f"history of {instance_id}")
    for h in rows:
        table.add_row(str(h.version), h.at.strftime("%H:%M:%S"),
                      h.from_state.value if h.from_state else "", h.to_state.value,
                      h.event.value, h.kind.value, h.actor, h.raw_status or "", h.reason or "")
    return table


def _record_json(r: InstanceRecord) -> dict[str, object]:
    return {
        "id": r.id, "name": r.name, "provider": r.provider, "state": r.state.value,
        "provider_instance_id": r.provider_instance_id, "instance_type": r.instance_type,
        "region": r.region, "price_per_hour": r.price_per_hour, "ip": r.ip,
        "billable": r.billable, "version": r.version, "created_at": r.created_at.isoformat(),
        "last_raw_status": r.last_raw_status, "last_error": r.last_error,
    }


def main() -> None:
    """Entry point: library errors become one red line and exit status 1, not a trace."""
    try:
        app()
    except GpufsmError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)

