"""Commands. Each one is a thin shell over the library; the logic lives below."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gpufsm.cli._offers import offers
from gpufsm.config import Settings
from gpufsm.errors import GpufsmError
from gpufsm.machines import TRANSITIONS, to_dot, to_mermaid

if TYPE_CHECKING:
    from gpufsm.cli._common import SpecFlags
    from gpufsm.store import SqlInstanceStore

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
    from gpufsm.cli._common import resolve_database_url
    from gpufsm.store import SqlInstanceStore

    settings = Settings()
    return SqlInstanceStore(resolve_database_url(database_url, settings), migrate=migrate,
                            sqlite_synchronous=settings.sqlite_synchronous)


def _check_providers(providers: Sequence[str] | None) -> None:
    """An unknown ``--provider`` is a usage error (exit 2) before anything is opened."""
    from gpufsm.cli._common import check_provider, error_line, exit_code_for

    try:
        for name in providers or ():
            check_provider(name)
    except GpufsmError as exc:
        error_line(exc)
        raise typer.Exit(exit_code_for(exc)) from None


@app.command()
def demo(
    instances: Annotated[int, typer.Option(
        min=1, max=50, help="Fleet size (plus a refused big job and a launch in doubt).")] = 4,
    seed: Annotated[int, typer.Option(
        help="Seed of the simulated cloud behind the emulator (boot times).")] = 7,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Where to keep the demo's rows (default: a temporary SQLite "
        "file, removed at the end).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Drive a small fleet through its whole life over Lambda's API, with faults.

    The real Lambda adapter talks HTTP to a Lambda-dialect emulator on loopback.
    Injected: 429s, 5xx, a capacity refusal, a lost launch answer, a death,
    a preemption and a reconciler killed mid-terminate. Exit status 1 if an
    invariant broke, a fault was not survived or an instance was left behind.
    """
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
        err.print(f"[red]error:[/red] --format: expected mermaid or dot, got {escape(repr(fmt))}")
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
              remote: Annotated[bool, typer.Option(
                  "--remote", help="Also ask the providers: instances they show that no "
                  "row tracks are listed as untracked, rows they do not show as missing."
              )] = False,
              refresh: Annotated[bool, typer.Option(
                  "--refresh", help="First list each provider once and apply what it "
                  "shows to the rows (as the reconciler would, without ending any); also "
                  "shows the SSH ports RunPod and Vast.ai map.")] = False,
              show_all: Annotated[bool, typer.Option(
                  "--all", help="Also the finished rows (TERMINATED, or FAILED and not "
                  "billing).")] = False,
              wide: Annotated[bool, typer.Option(
                  "--wide", help="Every column at full width, none wrapped.")] = False,
              ) -> None:
    """The fleet's status: state, SSH, uptime, cost so far, and the total $/h.

    Finished rows are hidden unless --all. SSH is user@ip -p port; the port is 22
    unless --refresh (or --remote) read the provider's mapping. Ids, types, IPs and SSH
    are never cut. Exit 1 when the database does not exist (nothing is created), and
    with --remote or --refresh when a provider could not be listed (named on stderr).
    """
    from gpufsm.cli._fleetview import list_instances

    _check_providers([provider] if provider is not None else None)
    raise typer.Exit(list_instances(database_url=database_url, provider=provider,
                                    as_json=as_json, remote=remote, show_all=show_all,
                                    wide=wide, refresh=refresh))


@app.command()
def history(instance_id: Annotated[str, typer.Argument(
                metavar="ID", help="Our id (a unique prefix is enough) or the provider's.")],
            database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """The transitions of one instance, with times, actors, reasons, raw statuses."""
    from gpufsm.cli._fleetview import show_history

    raise typer.Exit(show_history(instance_id, database_url=database_url, as_json=as_json))


@app.command()
def cost(
    since: Annotated[str | None, typer.Option(
        help="Only spend from this date (2026-12-01) or date and time (2026-12-01T09:30), "
        "UTC unless an offset is given.")] = None,
    by: Annotated[str, typer.Option(help="Group by provider, name or type.")] = "provider",
    database_url: DatabaseOpt = None, as_json: JsonOpt = False,
) -> None:
    """What each machine cost, from the transition history, and the fleet's burn $/h.

    Figures resting on an estimate are marked * with the reason. Read-only: no
    provider is called. Exit 2 for a bad --since or --by.
    """
    from gpufsm.cli._cost import show_cost

    raise typer.Exit(show_cost(database_url=database_url, since=since, by=by,
                               as_json=as_json))


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
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=1, max=65535,
        # escaped: rich markup would take [metrics] for a style and print "gpufsm"
        help="Serve Prometheus metrics on 127.0.0.1:PORT (needs gpufsm\\[metrics]).")
    ] = None,
    max_lifetime: Annotated[str | None, typer.Option(
        "--max-lifetime", metavar="DURATION",
        help="Terminate anything alive longer than this: 90s, 30m, 6h, 2d or seconds.")
    ] = None,
    idle_timeout: Annotated[str | None, typer.Option(
        "--idle-timeout", metavar="DURATION",
        help="Terminate RUNNING machines untouched (no state change) for this long.")
    ] = None,
    hourly_budget: Annotated[str | None, typer.Option(
        "--hourly-budget", metavar="DOLLARS",
        help="Keep the fleet's burn rate under $/h, terminating the newest first.")
    ] = None,
    budget: Annotated[list[str] | None, typer.Option(
        "--budget", metavar="CAP/WINDOW",
        help="Cap real spend: 100/day, 2000/month (UTC calendar) or 25/run; alert, then "
             "terminate the newest first (repeatable, one per window).")] = None,
    budget_alert: Annotated[str, typer.Option(
        "--budget-alert", metavar="FRACTION",
        help="Alert when a --budget's spend passes this fraction of its cap.")] = "0.8",
) -> None:
    """Keep the database true to the providers; terminate what should not bill.

    Exit status with --once: 0 when the pass finished without instance errors or
    alerts and every provider with rows that may bill could be listed, 1 otherwise;
    2 for bad usage. The loop exits 0 on SIGTERM/SIGINT after finishing its step.
    """
    from gpufsm.cli._common import handled, resolve_database_url
    from gpufsm.cli._reconcile import PolicyFlags, run_reconcile

    _check_providers(provider)
    flags = PolicyFlags(max_lifetime=max_lifetime, idle_timeout=idle_timeout,
                        hourly_budget=hourly_budget, budgets=budget or (),
                        budget_alert=budget_alert)

    @handled
    def reconcile_checked() -> int:
        return run_reconcile(once=once, interval=interval, providers=provider,
                             orphans=orphans, database_url=resolve_database_url(database_url),
                             as_json=as_json, console=console, metrics_port=metrics_port,
                             policy_flags=flags)

    raise typer.Exit(reconcile_checked())


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Create the database or bring its schema up to date (automatic for SQLite on any
    write; explicit for shared PostgreSQL)."""
    from gpufsm.cli._common import handled

    @handled
    def upgrade() -> int:
        store = _store(database_url, migrate=True)
        try:
            from gpufsm.store import current_revision

            console.print(f"schema at revision {current_revision(store.engine)}")
        finally:
            store.close()
        return 0

    raise typer.Exit(upgrade())


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


# ---- instance commands: thin shells over _lifecycle, _fleetview and _run ---------------

ProviderOpt = Annotated[str | None, typer.Option("--provider", "-p", help="Provider: lambda, "
                                                 "vastai, novita or runpod.")]
IdsArg = Annotated[list[str], typer.Argument(
    help="Instance ids: ours (a unique prefix is enough) or the provider's.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until it gets there.")]
TimeoutOpt = Annotated[float, typer.Option(min=1.0, help="Seconds to wait.")]
PollOpt = Annotated[float, typer.Option(min=0.05, help="Seconds between looks.")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="Instance type, e.g. gpu_1x_a10.")]
RegionOpt = Annotated[str | None, typer.Option(help="Region.")]
ImageOpt = Annotated[str | None, typer.Option(help="Container image (where the provider "
                                              "runs containers).")]
NameOpt = Annotated[str | None, typer.Option(help="A name for people; ours is added.")]
SshKeyOpt = Annotated[list[str] | None, typer.Option(
    "--ssh-key", help="Name of an SSH key registered with the provider (repeatable).")]
DiskOpt = Annotated[int | None, typer.Option("--disk", min=1, help="Disk size, GB.")]
GpusOpt = Annotated[int | None, typer.Option("--gpus", min=1, help="Number of GPUs.")]
EnvOpt = Annotated[list[str] | None, typer.Option(
    "--env", help="KEY=VALUE for the instance's environment (repeatable).")]
PortOpt = Annotated[list[int] | None, typer.Option(
    "--port", min=1, max=65535, help="Port to expose (repeatable).")]
OptionOpt = Annotated[list[str] | None, typer.Option(
    "--option", help="Provider-specific KEY=VALUE; VALUE may be JSON (repeatable).")]
MaxPriceOpt = Annotated[float | None, typer.Option(
    "--max-price", help="Highest $/h to accept (where the provider supports it).")]
SpecFileOpt = Annotated[Path | None, typer.Option(
    "--spec", help="Spec file (.json, .yaml); the flags override its fields.")]
GpuOpt = Annotated[str | None, typer.Option(
    "--gpu", help="Ask for a GPU instead of a provider and type: MODEL[,MODEL…][:COUNT], "
    "e.g. A100:1. The cheapest matching offer of every configured provider is tried, "
    "then the next; --provider and --region narrow where, --max-price caps $/h.")]
SpotOpt = Annotated[bool, typer.Option(
    "--interruptible", help="With --gpu: spot/bid machines are acceptable too.")]


def _spec_flags(provider: str | None, instance_type: str | None, region: str | None,
                image: str | None, name: str | None, ssh_key: list[str] | None,
                disk: int | None, gpus: int | None, env: list[str] | None,
                port: list[int] | None, option: list[str] | None, max_price: float | None,
                spec: Path | None, *, gpu: str | None = None, interruptible: bool = False
                ) -> SpecFlags:
    from gpufsm.cli._common import SpecFlags

    return SpecFlags(provider=provider, instance_type=instance_type, region=region,
                     image=image, name=name, ssh_keys=tuple(ssh_key or ()), disk_gb=disk,
                     gpus=gpus, env=tuple(env or ()), ports=tuple(port or ()),
                     options=tuple(option or ()), max_price=max_price, spec_file=spec,
                     gpu=gpu, interruptible=interruptible)


@app.command()
def launch(
    provider: ProviderOpt = None, instance_type: TypeOpt = None, region: RegionOpt = None,
    image: ImageOpt = None, name: NameOpt = None, ssh_key: SshKeyOpt = None,
    disk: DiskOpt = None, gpus: GpusOpt = None, env: EnvOpt = None, port: PortOpt = None,
    option: OptionOpt = None, max_price: MaxPriceOpt = None, spec: SpecFileOpt = None,
    gpu: GpuOpt = None, interruptible: SpotOpt = False,
    wait: WaitOpt = False, timeout: TimeoutOpt = 1800.0, poll_interval: PollOpt = 5.0,
    database_url: DatabaseOpt = None, as_json: JsonOpt = False,
) -> None:
    """Launch one instance and print its id (progress goes to stderr).

    With --json, one JSON object instead (id, state, provider, provider_instance_id, ip,
    the transition made, error), printed once the launch (and --wait) is over.

    Name the machine (--provider and --type), or ask for a GPU (--gpu A100:1): then the
    cheapest matching offer is tried, and on a capacity or quota refusal the next; exit
    1 lists every attempt and why it failed.
    """
    from gpufsm.cli._lifecycle import launch_instance

    flags = _spec_flags(provider, instance_type, region, image, name, ssh_key, disk, gpus,
                        env, port, option, max_price, spec, gpu=gpu,
                        interruptible=interruptible)
    raise typer.Exit(launch_instance(flags, database_url=database_url, wait=wait,
                                     timeout=timeout, poll_interval=poll_interval,
                                     as_json=as_json))


def _instance_command(verb: str, ids: list[str], database_url: str | None, wait: bool,
                      timeout: float, poll_interval: float, as_json: bool) -> None:
    from gpufsm.cli._lifecycle import instance_command

    raise typer.Exit(instance_command(verb, ids, database_url=database_url, wait=wait,
                                      timeout=timeout, poll_interval=poll_interval,
                                      as_json=as_json))


@app.command()
def start(ids: IdsArg, wait: WaitOpt = False, timeout: TimeoutOpt = 1800.0,
          poll_interval: PollOpt = 5.0, database_url: DatabaseOpt = None,
          as_json: JsonOpt = False) -> None:
    """Start stopped instances (where the provider can stop and start)."""
    _instance_command("start", ids, database_url, wait, timeout, poll_interval, as_json)


@app.command()
def stop(ids: IdsArg, wait: WaitOpt = False, timeout: TimeoutOpt = 1800.0,
         poll_interval: PollOpt = 5.0, database_url: DatabaseOpt = None,
         as_json: JsonOpt = False) -> None:
    """Stop instances (where the provider can; Lambda cannot)."""
    _instance_command("stop", ids, database_url, wait, timeout, poll_interval, as_json)


@app.command()
def restart(ids: IdsArg, wait: WaitOpt = False, timeout: TimeoutOpt = 1800.0,
            poll_interval: PollOpt = 5.0, database_url: DatabaseOpt = None,
            as_json: JsonOpt = False) -> None:
    """Restart (reboot) instances."""
    _instance_command("restart", ids, database_url, wait, timeout, poll_interval, as_json)


@app.command()
def terminate(ids: IdsArg, wait: WaitOpt = False, timeout: TimeoutOpt = 1800.0,
              poll_interval: PollOpt = 5.0, database_url: DatabaseOpt = None,
              as_json: JsonOpt = False) -> None:
    """Terminate instances; keeps going past failures, exit 1 if any failed.

    One line per id; with --json (here and on start, stop, restart) a JSON array of one
    object per id: id, state, provider, provider_instance_id, ip, transition, error.
    """
    _instance_command("terminate", ids, database_url, wait, timeout, poll_interval, as_json)


@app.command()
def rename(instance_id: Annotated[str, typer.Argument(metavar="ID")],
           name: Annotated[str, typer.Argument(metavar="NAME")],
           database_url: DatabaseOpt = None) -> None:
    """Rename an instance in the database, and on the provider where it can rename.

    Lambda renames the instance too. Vast.ai, Novita and RunPod cannot: there the name
    changes in the database only and the provider keeps the name it launched with
    (the command says so).
    """
    from gpufsm.cli._lifecycle import rename_instance

    raise typer.Exit(rename_instance(instance_id, name, database_url=database_url))


@app.command("destroy-all")
def destroy_all_command(
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", "-p", help="Only these providers (repeatable; default: every "
        "configured one).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Terminate every instance gpufsm launched, from the providers' own listings.

    Lists first and, unless --yes, shows what it will terminate (our id, name,
    provider, provider id, $/h) before asking. Works without the database (it adopts
    what it finds); one failure does not stop the rest. A provider it cannot list (key
    unset while rows there may bill, key refused, API unreachable) is named with the
    rows there that may bill. Exit 1 unless every instance was destroyed and every
    provider seen.
    """
    from gpufsm.cli._lifecycle import destroy_everything

    _check_providers(provider)
    raise typer.Exit(destroy_everything(provider, yes=yes, database_url=database_url))


@app.command()
def types(
    provider: ProviderOpt = None,
    available: Annotated[bool, typer.Option(
        "--available", help="Only types with capacity somewhere now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Instance types with their price per hour and where capacity exists, cheapest first."""
    from gpufsm.cli._fleetview import list_types

    _check_providers([provider] if provider is not None else None)
    raise typer.Exit(list_types(provider=provider, available=available, as_json=as_json))


app.command()(offers)


@app.command()
def run(
    command: Annotated[list[str] | None, typer.Option(
        "--command", "-c", help="Run in the remote directory; repeatable, in order, "
        "stopping at the first failure.")] = None,
    upload: Annotated[Path | None, typer.Option(
        help="Local folder whose contents go to the remote directory.")] = None,
    download: Annotated[list[str] | None, typer.Option(
        help="REMOTE:LOCAL to fetch afterwards (REMOTE relative to the remote directory; "
        "repeatable). Fetched even when a command failed.")] = None,
    remote_dir: Annotated[str, typer.Option(help="Working directory on the instance.")
                          ] = "~/project",
    ssh_user: Annotated[str | None, typer.Option(
        help="Login user (default: ubuntu on Lambda, root elsewhere).")] = None,
    ssh_key_file: Annotated[Path | None, typer.Option(
        help="Private key for the login (default: ssh's own).")] = None,
    ssh_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="SSH port (default: what the provider reports, else 22).")
    ] = None,
    ssh_timeout: Annotated[float, typer.Option(
        min=1.0, help="Seconds to wait for SSH once RUNNING.")] = 600.0,
    transfer: Annotated[str, typer.Option(
        help="How to upload: scp, or rsync (needs rsync on the instance too); downloads "
        "use scp.")] = "scp",
    provider: ProviderOpt = None, instance_type: TypeOpt = None, region: RegionOpt = None,
    image: ImageOpt = None, name: NameOpt = None, ssh_key: SshKeyOpt = None,
    disk: DiskOpt = None, gpus: GpusOpt = None, env: EnvOpt = None, port: PortOpt = None,
    option: OptionOpt = None, max_price: MaxPriceOpt = None, spec: SpecFileOpt = None,
    gpu: GpuOpt = None, interruptible: SpotOpt = False,
    recover: Annotated[int, typer.Option(
        min=0, help="When the provider reports the machine preempted or dead, launch up "
        "to N replacements (through placement with --gpu) and run the job again; every "
        "machine is terminated at the end.")] = 0,
    recover_settle: Annotated[float, typer.Option(
        min=0.0, help="With --recover: seconds the provider gets to report the machine "
        "lost after SSH fails, before it counts as the job's own failure.")] = 30.0,
    timeout: TimeoutOpt = 1800.0, poll_interval: PollOpt = 5.0,
    database_url: DatabaseOpt = None,
) -> None:
    """Launch, wait, upload, run, download, and always terminate (also on Ctrl-C).

    Needs something to do (-c, --upload or --download): without, it exits 2 before
    launching anything. Exit 1 when a step or a command failed (results are still
    fetched and the instance still terminated), or when --recover N replacements were
    lost too; 2 for bad usage, 130/143 when interrupted by SIGINT/SIGTERM.
    """
    from gpufsm.cli._run import RunOptions, parse_download, run_job

    flags = _spec_flags(provider, instance_type, region, image, name, ssh_key, disk, gpus,
                        env, port, option, max_price, spec, gpu=gpu,
                        interruptible=interruptible)
    try:
        downloads = tuple(parse_download(d) for d in download or ())
    except GpufsmError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    options = RunOptions(upload=upload, commands=tuple(command or ()), downloads=downloads,
                         remote_dir=remote_dir, ssh_user=ssh_user, ssh_key_file=ssh_key_file,
                         ssh_port=ssh_port, ssh_timeout=ssh_timeout, transfer=transfer,
                         timeout=timeout, poll_interval=poll_interval, recover=recover,
                         recover_settle=recover_settle)
    raise typer.Exit(run_job(flags, options, database_url=database_url))


def main() -> None:
    """Entry point: every error is one red line, not a trace or a boxed usage message;
    exit status 2 for bad input (an option, an argument, a variable), 1 for anything
    else, 130 when interrupted; a command's own ``typer.Exit`` status passes through.

    ``standalone_mode=False`` makes typer raise its usage errors instead of printing them
    its way. They come from typer's vendored click, whose public base is
    ``typer.TyperException``: ``click.UsageError`` would not catch them."""
    from gpufsm.cli._common import exit_code_for
    from gpufsm.cli._usage import usage_line

    try:
        code = app(prog_name="gpufsm", standalone_mode=False)
    except GpufsmError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        sys.exit(exit_code_for(exc))
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted", soft_wrap=True, highlight=False)
        sys.exit(130)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # the help is printed (to stdout, by typer's rich formatter) as the error is
            # made, as in standalone mode; exit 2 as before. Without rich it is the message.
            if text := exc.format_message():
                sys.stderr.write(text + "\n")
        else:
            err.print(f"[red]error:[/red] {escape(usage_line(exc))}", soft_wrap=True,
                      highlight=False)
        sys.exit(exc.exit_code)
    # the status of a typer.Exit; None (a command that returned) is success
    sys.exit(code if isinstance(code, int) else 0)
