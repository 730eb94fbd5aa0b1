"""``launch``, ``start``/``stop``/``restart``/``terminate``, ``rename``, ``destroy-all``.

The commands a person types against one instance or a whole account. They go through
Fleet like any scheduler would, so every step is checked against the table, written
before the provider is called and kept in the history. Commands over several ids keep
going past a failure and report each id on its own line, in the order given: with
``terminate a b c`` a refusal on ``a`` must not leave ``b`` and ``c`` billing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext

from rich.console import Console
from rich.markup import escape

from gpufsm.adapters import Renamable, adapter_class
from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    SpecFlags,
    WaitProgress,
    adapters_in_sight,
    at_stake,
    billing_note,
    blind_line,
    cli_actor,
    close_adapters,
    error_line,
    handled,
    open_fleet,
    open_store,
    resolve_instance,
    stderr,
    stdout,
    why_unseen,
)
from gpufsm.cli._placing import what_to_launch
from gpufsm.clock import Clock, SystemClock
from gpufsm.config import Settings
from gpufsm.errors import (
    GpufsmError,
    PlacementFailed,
    ProviderError,
    StoreError,
    TemporaryProviderError,
    ValidationError,
    VersionConflict,
)
from gpufsm.fleet import Fleet
from gpufsm.machines import Event, InstanceState
from gpufsm.notify import TransitionEvent
from gpufsm.reconcile import DestroyTarget, destroy_all, destroy_targets
from gpufsm.specs import InstanceSpec
from gpufsm.store import InstanceRecord, SqlInstanceStore

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


class _Heard:
    """The transitions one command commits, as the engine announces them (after each
    commit). What a command prints comes from here, not from a row read before it ran:
    another process may have moved the row in between, and the table must not claim a
    transition this command did not make."""

    def __init__(self, fleet: Fleet, instance_id: str | None = None) -> None:
        self.events: list[TransitionEvent] = []
        self._id = instance_id
        self._unsubscribe = fleet.subscribe(self._hear)

    def _hear(self, event: TransitionEvent) -> None:
        if self._id is None or event.instance_id == self._id:
            self.events.append(event)

    def first(self, event: Event) -> TransitionEvent | None:
        return next((e for e in self.events if e.event is event), None)

    def close(self) -> None:
        self._unsubscribe()


def _row_json(record: InstanceRecord | None, *, given: str | None = None,
              transition: TransitionEvent | None = None,
              error: object = None) -> dict[str, object]:
    """What ``--json`` prints for one instance an action command touched: the row as it
    is after, the transition this command made (None if it made none), the error."""
    made = None if transition is None else {
        "from": transition.from_state.value if transition.from_state else None,
        "to": transition.to_state.value,
        "reissued": transition.from_state is transition.to_state}
    out: dict[str, object] = {} if given is None else {"given": given}
    return {**out, "id": record.id if record else None,
            "state": record.state.value if record else None,
            "provider": record.provider if record else None,
            "provider_instance_id": record.provider_instance_id if record else None,
            "ip": record.ip if record else None, "transition": made,
            "error": None if error is None else str(error)}


def _json_if(as_json: bool, record: InstanceRecord | None, *,
             transition: TransitionEvent | None = None, error: object = None) -> None:
    """With ``--json``, the one object a failed or finished launch prints."""
    if as_json:
        _print_json(_row_json(record, transition=transition, error=error))


def _print_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


@handled
def launch_instance(flags: SpecFlags, *, database_url: str | None, wait: bool,
                    timeout: float, poll_interval: float, as_json: bool = False) -> int:
    """Launch one instance; print its id on stdout (and only that), or with ``as_json``
    one JSON object (the row, the transition made, any error) once it is over.

    Whatever way it ends, a row that was written is accounted for on stderr: FAILED and
    not billable, or "may bill" with the command that ends it. That includes Ctrl-C
    while the launch request is in flight (the row id comes from the engine's launch
    announcement, made once the row is committed and before the provider is called).
    """
    what, template, providers = what_to_launch(flags)
    with open_store(database_url) as store, open_fleet(store, providers) as fleet:
        heard = _Heard(fleet)
        try:
            record = fleet.launch(what, template=template, reason="gpufsm launch")
        except KeyboardInterrupt:
            _interrupted(fleet, heard.first(Event.LAUNCH))
            return 130
        except ProviderError as exc:
            error_line(exc)
            left = fleet.get(exc.instance_id) if exc.instance_id is not None else None
            if left is not None:
                never_sent = isinstance(exc, TemporaryProviderError) and exc.not_sent
                stderr.print(("nothing was sent; " if never_sent and not left.billable
                              else "") + billing_note(left), highlight=False)
            _json_if(as_json, left, transition=heard.first(Event.LAUNCH), error=exc)
            return EXIT_FAILURE
        except PlacementFailed as exc:
            error_line(exc)  # one line per attempt: which offer, and why not
            stderr.print("nothing of this placement bills: an attempt whose outcome was "
                         "unknown is watched, and terminated if its machine turns up "
                         "(gpufsm reconcile)", highlight=False)
            _json_if(as_json, None, error=exc)
            return EXIT_FAILURE
        except StoreError as exc:
            if heard.first(Event.LAUNCH) is not None:
                raise
            to = f" to {what.provider}" if isinstance(what, InstanceSpec) else ""
            error_line(f"could not record the new instance, so nothing was sent{to}: {exc}")
            _json_if(as_json, None, error=exc)
            return EXIT_FAILURE
        finally:
            heard.close()
        stderr.print(f"launched {record.id} on {record.provider} "
                     f"(provider id {record.provider_instance_id or 'not yet known'}, "
                     f"{record.state.value})", highlight=False)
        launched = heard.first(Event.LAUNCH)
        if not as_json:
            sys.stdout.write(f"{record.id}\n")
            sys.stdout.flush()
        if not wait:
            if as_json:
                _print_json(_row_json(record, transition=launched))
            return EXIT_OK
        return _wait_launched(fleet, record, launched, timeout=timeout,
                              poll_interval=poll_interval, as_json=as_json)


def _wait_launched(fleet: Fleet, record: InstanceRecord, launched: TransitionEvent | None,
                   *, timeout: float, poll_interval: float, as_json: bool) -> int:
    """``launch --wait``: until RUNNING, and what was left if it never got there."""
    try:
        record = _wait(fleet, record, S.RUNNING, timeout=timeout,
                       poll_interval=poll_interval)
    except KeyboardInterrupt:
        left = fleet.get(record.id)
        stderr.print(f"interrupted: {billing_note(left)}", highlight=False)
        if as_json:
            _print_json(_row_json(left, transition=launched, error="interrupted"))
        return 130
    except GpufsmError as exc:
        error_line(exc)
        left = fleet.get(record.id)
        stderr.print(f"not terminated: {billing_note(left)}", highlight=False)
        if as_json:
            _print_json(_row_json(left, transition=launched, error=exc))
        return EXIT_FAILURE
    stderr.print(f"{record.id[:8]} RUNNING at {record.ip or '(no ip reported)'}",
                 highlight=False)
    if as_json:
        _print_json(_row_json(record, transition=launched))
    return EXIT_OK


def _interrupted(fleet: Fleet, written: TransitionEvent | None) -> None:
    """Ctrl-C during a launch: say what was left. A placement the user gave up is
    cancelled: every attempt's machine terminated, and one that turns up later too."""
    if written is None:
        stderr.print("interrupted before the launch was recorded or sent", highlight=False)
        return
    placement = fleet.get(written.instance_id).placement_id
    if placement is None:
        stderr.print(f"interrupted during the launch call: "
                     f"{billing_note(fleet.get(written.instance_id))}", highlight=False)
        return
    for row in fleet.cancel_placement(placement, reason="gpufsm launch interrupted"):
        stderr.print(f"interrupted: {billing_note(row)}", highlight=False)


@handled
def instance_command(verb: str, ids: Sequence[str], *, database_url: str | None,
                     wait: bool = False, timeout: float = 1800.0,
                     poll_interval: float = 5.0, as_json: bool = False) -> int:
    """``verb`` (start, stop, restart, terminate) on every id, past individual failures.

    One line per id on stdout: ``<id8>  RUNNING → TERMINATING`` (the transition this
    command made: ``TERMINATING → TERMINATING (re-issued)`` when another terminate got
    there first) or ``<id>  error: …``; with ``as_json`` instead a JSON array of one
    object per id (the row after, the transition made, the error). Exit 1 if any id
    failed, naming how many on stderr.
    """
    if verb not in COMMAND_TARGETS:
        raise ValueError(f"unknown command {verb!r}")
    given = list(dict.fromkeys(ids))  # the same id twice is one instance
    say = _quiet if as_json else _line
    report: list[dict[str, object]] = []
    with open_store(database_url, existing=True) as store:  # ids name rows that exist
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
                    say(item, f"[red]error:[/red] {escape(str(outcome))}")
                    report.append(_row_json(None, given=item, error=outcome))
                elif outcome.id not in done:
                    done.add(outcome.id)
                    assert fleet is not None
                    report.append({"given": item, **_command_one(
                        fleet, verb, outcome, say, wait=wait, timeout=timeout,
                        poll_interval=poll_interval)})
    if as_json:
        _print_json(report)
    failed = sum(row["error"] is not None for row in report)
    if failed:
        stderr.print(f"{failed} of {len(given)} failed", highlight=False)
        return EXIT_FAILURE
    return EXIT_OK


def _command_one(fleet: Fleet, verb: str, record: InstanceRecord,
                 say: Callable[[str, str], None], *, wait: bool, timeout: float,
                 poll_interval: float) -> dict[str, object]:
    """``verb`` on one row; ``say`` the outcome, and return it as ``--json`` shows it."""
    label = record.id[:8]
    heard = _Heard(fleet, record.id)
    made: TransitionEvent | None = None
    try:
        command: Callable[..., InstanceRecord] = getattr(fleet, verb)
        after = command(record.id, reason=f"gpufsm {verb}")
        made = heard.first(Event(verb))
        if made is None:  # nothing to do: terminate of a row that is TERMINATED by now
            say(label, f"already {after.state.value}")
            return _row_json(after)
        before = made.from_state.value if made.from_state else "(new)"
        again = " (re-issued)" if made.from_state is made.to_state else ""
        say(label, f"{before} → {after.state.value}{again}")
        if wait and after.state is not COMMAND_TARGETS[verb]:
            after = _wait(fleet, after, COMMAND_TARGETS[verb], timeout=timeout,
                          poll_interval=poll_interval)
            say(label, after.state.value)
    except GpufsmError as exc:
        say(label, f"[red]error:[/red] {escape(str(exc))}")
        return _row_json(_reread(fleet, record), transition=made, error=exc)
    finally:
        heard.close()
    return _row_json(after, transition=made)


def _reread(fleet: Fleet, record: InstanceRecord) -> InstanceRecord:
    """The row after a failed command, or as it was read if it cannot be read now."""
    try:
        return fleet.get(record.id)
    except GpufsmError:
        return record


def _quiet(label: str, text: str) -> None:
    """``--json``: the lines are not printed; the JSON says it all."""


def _line(label: str, text: str) -> None:
    stdout.print(f"{escape(label)}  {text}", highlight=False, soft_wrap=True)


def _can_rename(provider: str) -> bool:
    """Whether the provider's adapter can rename an instance (Lambda can; Vast.ai,
    Novita and RunPod have no rename call)."""
    try:
        return issubclass(adapter_class(provider), Renamable)
    except ValueError:  # a provider this gpufsm does not know: nothing to call
        return False


@handled
def rename_instance(given: str, name: str, *, database_url: str | None) -> int:
    """Rename in the row, and on the provider where it can rename.

    The provider gets ``<tag>/<name>``, as at launch, so the name keeps saying whose
    instance it is on providers that read ownership from names. Where the provider
    cannot rename, the row is renamed and the line says the provider keeps its name
    (and needs no API key: nothing is called).
    """
    if not name.strip():
        raise ValidationError("NAME", "must not be empty")
    with open_store(database_url, existing=True) as store:
        record = resolve_instance(store, given)
        if record.state in (S.TERMINATING, S.TERMINATED):
            error_line(f"{record.id[:8]} is {record.state.value}: nothing to rename")
            return EXIT_FAILURE
        if not _can_rename(record.provider):
            if _rename_row(store, record, name, SystemClock()) is None:
                error_line("the row kept changing and still has the old name: run rename "
                           "again")
                return EXIT_FAILURE
            stdout.print(f"{escape(record.id[:8])}  renamed to {escape(name)} in the "
                         f"database only: {record.provider} cannot rename instances, so it "
                         "keeps the name it was launched with", highlight=False,
                         soft_wrap=True)
            return EXIT_OK
        with open_fleet(store, [record.provider]) as fleet:
            if record.provider_instance_id is None:
                error_line(f"{record.id[:8]} has no provider id yet ({record.state.value}); "
                           "try again once it is CREATED")
                return EXIT_FAILURE
            adapter = fleet.adapters[record.provider]
            assert isinstance(adapter, Renamable)  # _can_rename said so
            adapter.rename(record.provider_instance_id, f"{record.tag}/{name}")
            if _rename_row(store, record, name, fleet.clock) is None:
                error_line(f"renamed on {record.provider}, but the row kept changing "
                           "and still has the old name: run rename again")
                return EXIT_FAILURE
    stdout.print(f"{escape(record.id[:8])}  renamed to {escape(name)}", highlight=False)
    return EXIT_OK


def _rename_row(store: SqlInstanceStore, record: InstanceRecord, name: str,
                clock: Clock) -> InstanceRecord | None:
    """Write the new name; None if the row kept moving (a reconciler may move it
    between our read and our write: re-read and try again, three times)."""
    for _ in range(3):
        try:
            return store.update(record.id, expected_version=record.version, at=clock.now(),
                                changes={"name": name})
        except VersionConflict:
            record = store.get(record.id)
    return None


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


@handled
def destroy_everything(providers: Sequence[str] | None, *, yes: bool,
                       database_url: str | None, console: Console | None = None) -> int:
    """Terminate every instance carrying our tag on the providers, from their listings.

    Lists first; unless ``yes``, shows what it is about to destroy (our id, name,
    provider, provider id, $/h) and asks, and with no terminal to ask on refuses
    (exit 2) rather than guess. One line per instance, then any provider it could not
    see (no key, a refused or failed listing) with the rows there that may bill, then
    ``Destroyed k/n``. Exit 1 unless k == n and every provider was seen.
    """
    out = console or stdout
    if not yes and not _stdin_is_tty():
        error_line("destroy-all asks for confirmation and there is no terminal "
                   "to ask on: pass --yes to confirm")
        return EXIT_USAGE
    with open_store(database_url) as store:
        adapters, unseen = adapters_in_sight(Settings(), store, providers)
        try:
            fleet = Fleet(store, adapters, actor=cli_actor())
            blind = dict(unseen)  # provider → why it could not be seen
            plans: dict[str, list[DestroyTarget]] = {}
            for provider in sorted(fleet.adapters):
                try:
                    plans[provider] = destroy_targets(fleet, provider)
                except GpufsmError as exc:
                    blind[provider] = why_unseen(exc)
            targets = [t for provider in sorted(plans) for t in plans[provider]]
            if targets and not yes and not _confirm(store, targets, blind):
                stderr.print("nothing done")
                return EXIT_FAILURE
            total = destroyed = 0
            for provider in sorted(plans):
                result = destroy_all(fleet, provider, reason="gpufsm destroy-all",
                                     targets=plans[provider],
                                     on_each=_destroyed_line(store, provider, out))
                total += result.total
                destroyed += result.destroyed
            for provider, why in sorted(blind.items()):
                error_line(blind_line(provider, why, at_stake(store, provider),
                                      "not destroyed"))
            out.print(f"Destroyed {destroyed}/{total}", highlight=False)
        finally:
            close_adapters(adapters)
    return EXIT_OK if destroyed == total and not blind else EXIT_FAILURE


def _confirm(store: SqlInstanceStore, targets: Sequence[DestroyTarget],
             blind: dict[str, str]) -> bool:
    """Show what is about to be destroyed (and what cannot be seen), then ask."""
    import typer

    stderr.print("about to terminate (our id, name, provider, provider id, $/h):",
                 highlight=False)
    for t in targets:
        price = f"{t.price_per_hour:.2f}" if t.price_per_hour is not None else "?"
        stderr.print(f"  {t.row_id[:8] if t.row_id else '(no row)'}  {escape(t.name or '-')}"
                     f"  {t.provider}  {escape(t.provider_instance_id)}  {price}",
                     highlight=False)
    for provider, why in sorted(blind.items()):
        error_line(blind_line(provider, why, at_stake(store, provider),
                              "cannot be destroyed now"))
    providers = sorted({t.provider for t in targets})
    n = len(targets)
    return typer.confirm(f"Terminate these {n} instance{'' if n == 1 else 's'} on "
                         f"{', '.join(providers)}?", default=False, err=True)


def _destroyed_line(store: SqlInstanceStore, provider: str, out: Console
                    ) -> Callable[[str, str | None], None]:
    """One line per instance: our id and name, the provider's id, what happened."""

    def show(pid: str, error: str | None) -> None:
        row = store.find(provider, provider_instance_id=pid)  # adopted ones have one now
        ours = row.id[:8] if row else "(no row)"
        name = (row.name if row else None) or "-"
        outcome = "terminating" if error is None else f"[red]failed:[/red] {escape(error)}"
        out.print(f"{ours}  {escape(name)}  {provider}  {escape(pid)}  {outcome}",
                  highlight=False, soft_wrap=True)

    return show
