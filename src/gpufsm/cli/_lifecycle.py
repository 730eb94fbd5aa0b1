"""``launch``, ``start``/``stop``/``restart``/``terminate``, ``rename``, ``destroy-all``.

The commands a person types against one instance or a whole account. They go through
Fleet like any scheduler would, so every step is checked against the table, written
before the provider is called and kept in the history. Commands over several ids keep
going past a failure and report each id on its own line, in the order given: with
``terminate a b c`` a refusal on ``a`` must not leave ``b`` and ``c`` billing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from rich.console import Console
from rich.markup import escape

from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    SpecFlags,
    WaitProgress,
    build_spec,
    error_line,
    handled,
    open_fleet,
    open_store,
    resolve_instance,
    stderr,
    stdout,
)
from gpufsm.errors import GpufsmError, ProviderError, ValidationError, VersionConflict
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.reconcile import destroy_all
from gpufsm.store import InstanceRecord

__all__ = ["COMMAND_TARGETS", "destroy_everything", "instance_command", "launch_instance",
           "rename_instance"]

S = InstanceState

#: What ``--wait`` waits for after each command.
COMMAND_TARGETS: dict[str, InstanceState] = {
    "start": S.RUNNING,
    "stop": S.STOPPED,
    "restart": S.RUNNING,
    "terminate": S.TERMINATED,
}


def _wait(fleet: Fleet, record: InstanceRecord, target: InstanceState, *, timeout: float,
          poll_interval: float) -> InstanceRecord:
    with WaitProgress(f"waiting for {record.id[:8]} to be {target.value}") as progress:
        return fleet.wait_for(record.id, target, timeout=timeout,
                              poll_interval=poll_interval, on_progress=progress)


@handled
def launch_instance(flags: SpecFlags, *, database_url: str | None, wait: bool,
                    timeout: float, poll_interval: float) -> int:
    """Launch one instance; print its id on stdout (and only that)."""
    spec = build_spec(flags)
    with open_store(database_url) as store, open_fleet(store, [spec.provider]) as fleet:
        try:
            record = fleet.launch(spec, reason="gpufsm launch")
        except ProviderError as exc:
            error_line(exc)
            if exc.instance_id is not None:
                left = fleet.get(exc.instance_id)
                bills = "and may bill" if left.billable else "not billable"
                stderr.print(f"row {left.id} is {left.state.value} ({bills}); "
                             f"see: gpufsm history {left.id[:8]}", highlight=False)
            return EXIT_FAILURE
        stderr.print(f"launched {record.id} on {record.provider} "
                     f"(provider id {record.provider_instance_id or 'not yet known'}, "
                     f"{record.state.value})", highlight=False)
        sys.stdout.write(f"{record.id}\n")
        sys.stdout.flush()
        if not wait:
            return EXIT_OK
        try:
            record = _wait(fleet, record, S.RUNNING, timeout=timeout,
                           poll_interval=poll_interval)
        except KeyboardInterrupt:
            stderr.print(f"interrupted: {record.id} was launched and may bill; "
                         f"gpufsm terminate {record.id[:8]}", highlight=False)
            return 130
        except GpufsmError as exc:
            error_line(exc)
            stderr.print(f"the instance was not terminated; to stop paying: "
                         f"gpufsm terminate {record.id[:8]}", highlight=False)
            return EXIT_FAILURE
        stderr.print(f"{record.id[:8]} RUNNING at {record.ip or '(no ip reported)'}",
                     highlight=False)
        return EXIT_OK


@handled
def instance_command(verb: str, ids: Sequence[str], *, database_url: str | None,
                     wait: bool = False, timeout: float = 1800.0,
                     poll_interval: float = 5.0) -> int:
    """``verb`` (start, stop, restart, terminate) on every id, past individual failures.

    One line per id on stdout: ``<id8>  RUNNING → TERMINATING`` or ``<id>  error: …``.
    Exit 1 if any id failed, naming how many on stderr.
    """
    if verb not in COMMAND_TARGETS:
        raise ValueError(f"unknown command {verb!r}")
    given = list(dict.fromkeys(ids))  # the same id twice is one instance
    failed = 0
    with open_store(database_url) as store:
        # Resolve every id first: the rows name the providers whose adapters we need.
        resolved: list[tuple[str, InstanceRecord | GpufsmError]] = []
        for item in given:
            try:
                resolved.append((item, resolve_instance(store, item)))
            except GpufsmError as exc:
                resolved.append((item, exc))
        providers = {r.provider for _, r in resolved if isinstance(r, InstanceRecord)}
        with open_fleet(store, providers) if providers else nullcontext() as fleet:
            done: set[str] = set()
            for item, outcome in resolved:
                if isinstance(outcome, GpufsmError):
                    failed += 1
                    _line(item, f"[red]error:[/red] {escape(str(outcome))}")
                elif outcome.id not in done:
                    done.add(outcome.id)
                    assert fleet is not None
                    failed += not _command_one(fleet, verb, outcome, wait=wait,
                                               timeout=timeout, poll_interval=poll_interval)
    if failed:
        stderr.print(f"{failed} of {len(given)} failed", highlight=False)
        return EXIT_FAILURE
    return EXIT_OK


def _command_one(fleet: Fleet, verb: str, record: InstanceRecord, *, wait: bool,
                 timeout: float, poll_interval: float) -> bool:
    label = record.id[:8]
    try:
        if verb == "terminate" and record.state is S.TERMINATED:
            _line(label, "already TERMINATED")
            return True
        command: Callable[..., InstanceRecord] = getattr(fleet, verb)
        after = command(record.id, reason=f"gpufsm {verb}")
        _line(label, f"{record.state.value} → {after.state.value}")
        if wait and after.state is not COMMAND_TARGETS[verb]:
            after = _wait(fleet, after, COMMAND_TARGETS[verb], timeout=timeout,
                          poll_interval=poll_interval)
            _line(label, after.state.value)
    except GpufsmError as exc:
        _line(label, f"[red]error:[/red] {escape(str(exc))}")
        return False
    return True


def _line(label: str, text: str) -> None:
    stdout.print(f"{escape(label)}  {text}", highlight=False, soft_wrap=True)


@handled
def rename_instance(given: str, name: str, *, database_url: str | None) -> int:
    """Rename on the provider (where it can) and in the row.

    The provider gets ``<tag>/<name>``, as at launch, so the name keeps saying whose
    instance it is on providers that read ownership from names.
    """
    if not name.strip():
        raise ValidationError("NAME", "must not be empty")
    with open_store(database_url) as store:
        record = resolve_instance(store, given)
        with open_fleet(store, [record.provider]) as fleet:
            rename = getattr(fleet.adapters[record.provider], "rename", None)
            if rename is None:
                error_line(f"rename is not supported by {record.provider}")
                return EXIT_FAILURE
            if record.state in (S.TERMINATING, S.TERMINATED):
                error_line(f"{record.id[:8]} is {record.state.value}: nothing to rename")
                return EXIT_FAILURE
            if record.provider_instance_id is None:
                error_line(f"{record.id[:8]} has no provider id yet ({record.state.value}); "
                           "try again once it is CREATED")
                return EXIT_FAILURE
            rename(record.provider_instance_id, f"{record.tag}/{name}")
            for _ in range(3):  # a reconciler may move the row meanwhile: re-read
                try:
                    store.update(record.id, expected_version=record.version,
                                 at=fleet.clock.now(), changes={"name": name})
                    break
                except VersionConflict:
                    record = store.get(record.id)
            else:
                error_line(f"renamed on {record.provider}, but the row kept changing "
                           "and still has the old name: run rename again")
                return EXIT_FAILURE
    stdout.print(f"{escape(record.id[:8])}  renamed to {escape(name)}", highlight=False)
    return EXIT_OK


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


@handled
def destroy_everything(providers: Sequence[str] | None, *, yes: bool,
                       database_url: str | None, console: Console | None = None) -> int:
    """Terminate every instance carrying our tag on the providers, from their listings.

    Asks first unless ``yes``; with no terminal to ask on, refuses (exit 2) rather
    than guess. One line per instance, then ``Destroyed k/n``; exit 1 unless k == n
    and every listing answered.
    """
    out = console or stdout
    with open_store(database_url) as store, open_fleet(store, providers or None) as fleet:
        names = sorted(fleet.adapters)
        if not yes:
            if not _stdin_is_tty():
                error_line("destroy-all asks for confirmation and there is no terminal "
                           "to ask on: pass --yes to confirm")
                return EXIT_USAGE
            import typer

            if not typer.confirm(f"Terminate every instance gpufsm launched on "
                                 f"{', '.join(names)}?", default=False, err=True):
                stderr.print("nothing done")
                return EXIT_FAILURE
        total = destroyed = 0
        blind: list[str] = []
        for provider in names:
            def show(pid: str, error: str | None, provider: str = provider) -> None:
                outcome = ("terminating" if error is None
                           else f"[red]failed:[/red] {escape(error)}")
                out.print(f"{provider}  {escape(pid)}  {outcome}", highlight=False,
                          soft_wrap=True)

            try:
                result = destroy_all(fleet, provider, reason="gpufsm destroy-all",
                                     on_each=show)
            except GpufsmError as exc:
                blind.append(provider)
                error_line(f"{provider}: cannot list the instances, nothing done there: "
                           f"{exc}")
                continue
            total += result.total
            destroyed += result.destroyed
        out.print(f"Destroyed {destroyed}/{total}", highlight=False)
        if blind:
            error_line(f"not known for {', '.join(blind)}: their listing failed")
    return EXIT_OK if destroyed == total and not blind else EXIT_FAILURE
