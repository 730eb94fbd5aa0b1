"""What the commands share: opening the store and the adapters, error lines, ids, specs.

Every command that talks to a provider prints a failure as one line on stderr and
returns an exit status (0 ok, 1 failure, 2 usage) instead of raising, so a user never
sees a traceback for a refused call or a bad flag, and a script can tell "you asked
wrongly" (2) from "it did not work" (1). Results go to stdout, everything a person
reads while waiting (progress, notes, errors) to stderr, so ``ID=$(gpufsm launch …)``
captures just the id.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gpufsm.adapters import Closable, ProviderAdapter
from gpufsm.cli._providers import PROVIDER_SETTINGS, build_adapters
from gpufsm.config import Settings, check_database_url
from gpufsm.errors import (
    GpufsmError,
    InstanceNotFound,
    ProviderError,
    StoreError,
    ValidationError,
)
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec, parse_spec
from gpufsm.store import InstanceRecord, SqlInstanceStore, sqlite_file

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "SpecFlags",
    "WaitProgress",
    "adapters_in_sight",
    "at_stake",
    "billing_note",
    "blind_line",
    "build_spec",
    "check_provider",
    "cli_actor",
    "close_adapters",
    "configured_providers",
    "error_line",
    "exit_code_for",
    "handled",
    "lay_flags",
    "load_spec_file",
    "open_fleet",
    "open_store",
    "parse_pairs",
    "resolve_database_url",
    "resolve_instance",
    "stderr",
    "stdout",
    "why_unseen",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Consoles that look up sys.stdout / sys.stderr when they write (so test runners that
#: swap the streams see the output). Messages on stderr are never wrapped: one message,
#: one line, whatever the width, so a log or a grep sees it whole.
stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)

P = ParamSpec("P")


def error_line(message: object, *, console: Console | None = None) -> None:
    """One red ``error:`` line. Escaped: provider codes look like ``[global/...]``, which
    rich would otherwise swallow as markup."""
    (console or stderr).print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True,
                              highlight=False)


def exit_code_for(exc: GpufsmError) -> int:
    """Bad input (a flag, a spec, a missing key) is usage; anything else a failure."""
    return EXIT_USAGE if isinstance(exc, ValidationError) else EXIT_FAILURE


def handled(fn: Callable[P, int]) -> Callable[P, int]:
    """Run a command body; a GpufsmError becomes one error line and its exit status."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return fn(*args, **kwargs)
        except GpufsmError as exc:
            error_line(exc)
            return exit_code_for(exc)

    return wrapper


def cli_actor() -> str:
    """Who wrote a history row: this command on this host (several may share a database)."""
    return f"cli@{socket.gethostname()}:{os.getpid()}"


def resolve_database_url(database_url: str | None, settings: Settings | None = None) -> str:
    """The database a command uses, checked: ``--database-url`` (which typer also fills
    from GPUFSM_DATABASE_URL), else the setting (``.env``, or the default).

    Every command that opens a store goes through here, so a path where a URL belongs
    or an unsupported database is one line naming what the person typed, never an
    SQLAlchemy traceback.
    """
    if database_url is None:
        url = (settings or Settings()).database_url
        field = "GPUFSM_DATABASE_URL"
    else:
        url = database_url
        from_env = os.environ.get("GPUFSM_DATABASE_URL") == database_url
        field = "GPUFSM_DATABASE_URL" if from_env else "--database-url"
    check_database_url(url, field=field)
    try:
        make_url(url)
    except ArgumentError:
        raise ValidationError(field, "not a valid database URL: use sqlite:////abs/path/"
                              "gpufsm.db or postgresql+psycopg://user@host/dbname") from None
    return url


@contextmanager
def open_store(database_url: str | None, *, existing: bool = False
               ) -> Iterator[SqlInstanceStore]:
    """The store a command works on; closed on the way out.

    ``existing``: for commands that only read. A SQLite file that is not there is
    refused (StoreError, exit 1) before anything is opened: opening would create the
    folders and an empty database, and the command would show an empty fleet as if
    that were the truth, when the likelier story is a wrong path. (A PostgreSQL
    database without the schema is refused by the store itself.)
    """
    settings = Settings()
    url = resolve_database_url(database_url, settings)
    if existing and (path := sqlite_file(url)) is not None and not path.exists():
        raise StoreError(f"no database at {path} (check --database-url or "
                         "GPUFSM_DATABASE_URL; any `gpufsm launch` creates it, as does "
                         "`gpufsm db upgrade`)")
    store = SqlInstanceStore(url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        yield store
    finally:
        store.close()


def close_adapters(adapters: Iterable[ProviderAdapter]) -> None:
    for adapter in adapters:
        if isinstance(adapter, Closable):
            adapter.close()


@contextmanager
def open_fleet(store: SqlInstanceStore, providers: Iterable[str] | None) -> Iterator[Fleet]:
    """A Fleet over ``store`` with an adapter per provider in ``providers`` (None: every
    configured one). A provider without its API key is a ValidationError naming the
    variable, raised before anything is called."""
    wanted = sorted(set(providers)) if providers is not None else None
    adapters = build_adapters(Settings(), wanted)
    try:
        yield Fleet(store, adapters, actor=cli_actor())
    finally:
        close_adapters(adapters)


def configured_providers(settings: Settings) -> list[str]:
    """The providers whose API key is set, in name order."""
    return [name for name, (key_field, _, _) in sorted(PROVIDER_SETTINGS.items())
            if getattr(settings, key_field) is not None]


def check_provider(name: str, *, field: str = "--provider") -> str:
    """``name`` if gpufsm knows that provider; else a ValidationError listing the known
    and the configured ones (and the lowercase name, for ``LAMBDA``).

    Checked before anything else, by every command that takes a provider: otherwise an
    unknown name reads as an empty table, or as the spec's regular expression.
    """
    if name in PROVIDER_SETTINGS:
        return name
    hint = f"did you mean {name.lower()!r}? " if name.lower() in PROVIDER_SETTINGS else ""
    configured = ", ".join(configured_providers(Settings())) or "none"
    raise ValidationError(field, f"unknown provider {name!r}; {hint}known: "
                          f"{', '.join(sorted(PROVIDER_SETTINGS))} (configured: {configured})",
                          value=name)


def at_stake(store: SqlInstanceStore, provider: str | None) -> int:
    """How many rows on ``provider`` (None: any) may bill: not TERMINATED and billable.
    What a person must hear about when that provider cannot be seen."""
    live = [s for s in InstanceState if s is not InstanceState.TERMINATED]
    return sum(r.billable for r in store.list(provider=provider, states=live))


def adapters_in_sight(settings: Settings, store: SqlInstanceStore,
                      providers: Sequence[str] | None
                      ) -> tuple[list[ProviderAdapter], dict[str, str]]:
    """Adapters for ``providers`` (None: every configured one), and the providers that
    cannot be seen for want of a key while rows there may bill (provider → why).

    A provider named explicitly without its key is a ValidationError naming the
    variable. Unnamed, it used to be skipped in silence, so ``destroy-all`` could say
    ``Destroyed 0/0`` over machines that bill: now it is reported as unseen.
    """
    if providers:
        return build_adapters(settings, providers), {}
    configured = configured_providers(settings)
    unseen = {name: f"{env} not set" for name, (_, _, env) in sorted(PROVIDER_SETTINGS.items())
              if name not in configured and at_stake(store, name)}
    if not configured and not unseen:
        build_adapters(settings, None)  # raises: no provider configured, naming the keys
    return (build_adapters(settings, configured) if configured else []), unseen


def why_unseen(exc: GpufsmError) -> str:
    """Why a listing failed, short: ``401 API key was invalid [global/invalid-api-key]``
    (the provider's name is already at the start of the line it goes in)."""
    if isinstance(exc, ProviderError):
        text = str(exc).removeprefix(f"{exc.provider}: ")
        status = exc.status_code
        return f"{status} {text}" if status and str(status) not in text else text
    return str(exc)


def blind_line(provider: str, why: str, stake: int, consequence: str) -> str:
    """``lambda: could not list (401 …): 3 billable rows there not destroyed``."""
    rows = f"{stake} billable row{'' if stake == 1 else 's'}"
    return f"{provider}: could not list ({why}): {rows} there {consequence}"


def billing_note(record: InstanceRecord) -> str:
    """What a row means for the bill, and the command that ends it if it may bill."""
    if record.billable and record.state is not InstanceState.TERMINATED:
        return (f"row {record.id} is {record.state.value} and may bill: "
                f"gpufsm terminate {record.id}")
    return f"row {record.id} is {record.state.value} (not billable), nothing bills"


def resolve_instance(store: SqlInstanceStore, given: str) -> InstanceRecord:
    """A row by full id, by the provider's own id, or by a unique prefix of our id.

    The tables print 8 characters of the id and the provider console prints its own id:
    both should work, in every command that takes ids. A provider id shared by several
    rows (an instance that came back after its row was ended) means the live row.
    Anything still ambiguous is refused, listing the candidates, rather than picking
    one: the command may be ``terminate``.
    """
    try:
        return store.get(given)
    except InstanceNotFound:
        pass
    if not given:
        raise InstanceNotFound(given)
    rows = store.list()
    by_pid = [r for r in rows if r.provider_instance_id == given]
    live = [r for r in by_pid if r.state is not InstanceState.TERMINATED]
    if len(by_pid) == 1 or len(live) == 1:
        return by_pid[0] if len(by_pid) == 1 else live[0]
    matches = by_pid or [r for r in rows if r.id.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = "".join(f"\n  {r.id}  {r.name or '-'}  {r.provider}  {r.state.value}"
                         for r in matches)
        raise ValidationError("ID", f"{given!r} matches {len(matches)} instances; give more "
                              f"of the id:{listed}", value=given)
    raise InstanceNotFound(given)


# ---- launch specs from flags --------------------------------------------------------------


@dataclass(frozen=True)
class SpecFlags:
    """The launch flags shared by ``launch`` and ``run``, as typed by the user."""

    provider: str | None = None
    instance_type: str | None = None
    region: str | None = None
    image: str | None = None
    name: str | None = None
    ssh_keys: Sequence[str] = ()
    disk_gb: int | None = None
    gpus: int | None = None
    env: Sequence[str] = ()
    ports: Sequence[int] = ()
    options: Sequence[str] = ()
    max_price: float | None = None
    spec_file: Path | None = None
    #: ``--gpu A100:1``: ask placement for a GPU instead of naming the machine; then
    #: ``--provider`` and ``--region`` narrow where it may look.
    gpu: str | None = None
    interruptible: bool = False


def parse_pairs(flag: str, items: Iterable[str], *, json_values: bool = False
                ) -> dict[str, Any]:
    """``KEY=VALUE`` flags into a dict; with ``json_values`` a value that parses as JSON
    (``3``, ``true``, ``{"id": "x"}``) is taken as that, anything else as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValidationError(flag, "expected KEY=VALUE", value=item)
        if json_values:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def load_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError("--spec", f"cannot read {path}: {exc.strerror or exc}",
                              value=str(path)) from None
    data: object
    if path.suffix.lower() in (".yaml", ".yml"):
        try:  # PyYAML is optional (the dev extra has it); typed Any: it ships no stubs
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise ValidationError("--spec", "reading YAML needs PyYAML (pip install pyyaml); "
                                  "or give the spec as JSON", value=str(path)) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationError("--spec", f"{path} is not valid YAML: {exc}",
                                  value=str(path)) from None
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValidationError("--spec", f"{path} is not valid JSON: {exc}",
                                  value=str(path)) from None
    if not isinstance(data, dict):
        raise ValidationError("--spec", f"{path} must hold one mapping of spec fields",
                              value=str(path))
    return data


def build_spec(flags: SpecFlags) -> InstanceSpec:
    """The spec file (if any) with the flags laid over it, validated.

    Flags win over the file, so one file can serve several launches that differ in a
    region or a name. Repeatable flags (``--ssh-key``, ``--port``) replace the file's
    list; ``--env`` and ``--option`` are merged into its mappings key by key.
    """
    data = load_spec_file(flags.spec_file) if flags.spec_file else {}
    machine = {"provider": flags.provider, "instance_type": flags.instance_type,
               "region": flags.region, "gpu_count": flags.gpus,
               "max_price_per_hour": flags.max_price}
    data.update({k: v for k, v in machine.items() if v is not None})
    lay_flags(data, flags)
    for key, flag in (("provider", "--provider"), ("instance_type", "--type")):
        if not data.get(key):
            raise ValidationError(flag, "required (as a flag or in the --spec file)")
    if isinstance(data["provider"], str):
        check_provider(data["provider"], field="--provider" if flags.provider else "provider")
    return parse_spec(data)


def lay_flags(data: dict[str, Any], flags: SpecFlags) -> None:
    """The flags of what runs on the machine, over the spec file's ``data`` (in place)."""
    simple = {"image": flags.image, "name": flags.name, "disk_gb": flags.disk_gb}
    data.update({k: v for k, v in simple.items() if v is not None})
    if flags.ssh_keys:
        data["ssh_key_names"] = list(flags.ssh_keys)
    if flags.ports:
        data["ports"] = list(flags.ports)
    if flags.env:
        data["env"] = {**(data.get("env") or {}), **parse_pairs("--env", flags.env)}
    if flags.options:
        data["options"] = {**(data.get("options") or {}),
                           **parse_pairs("--option", flags.options, json_values=True)}


# ---- waiting, shown ------------------------------------------------------------------------


class WaitProgress:
    """Shows a wait on stderr: a spinner on a terminal, and one line per change always.

    Passed as ``on_progress`` to ``Fleet.wait_for``; a line per state (or raw status)
    change keeps a log readable where no spinner can be drawn (CI, a pipe).
    """

    def __init__(self, what: str, *, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or stderr
        self.what = what
        self._now = clock
        self._started = clock()
        self._last: tuple[str, str | None] | None = None
        self._status: Status | None = None

    def __enter__(self) -> WaitProgress:
        if self.console.is_terminal:
            self._status = self.console.status(escape(self.what))
            self._status.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, record: InstanceRecord) -> None:
        elapsed = self._now() - self._started
        now = (record.state.value, record.last_raw_status)
        raw = f" ({record.last_raw_status})" if record.last_raw_status else ""
        if now != self._last:
            self._last = now
            self.console.print(f"  {elapsed:6.1f}s  {record.id[:8]} "
                               f"{record.state.value}{escape(raw)}", highlight=False)
        if self._status is not None:
            self._status.update(escape(f"{self.what}: {record.state.value}{raw}, "
                                       f"{elapsed:.0f}s"))
