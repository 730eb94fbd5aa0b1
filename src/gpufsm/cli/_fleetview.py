"""``instances``, ``history`` and ``types``: what we track, what the providers show,
what they sell.

``instances`` is a status view: what is live (finished rows only with ``--all``), how
to reach it (the SSH line ``gpufsm run`` would use), how long it has billed, what it has
cost (the ledger) and the fleet's $/h. It reads the database, so ``--refresh`` first
applies one listing per provider to the rows through the engine.

``instances --remote`` puts the database beside each provider's own listing, because
the two disagreeing is exactly when money leaks: an instance the provider shows that no
row tracks bills with nobody watching it (``untracked``), and a live row whose instance
the provider does not show (``missing``) is watched for nothing. A provider that cannot
be seen (its listing failed, or its key is not set while rows there may bill) says so,
with how many rows there may bill, shows its rows as ``?`` and makes the exit status 1,
rather than reading as "nothing there".

These commands only read: a database that does not exist is refused, never created.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

from gpufsm.adapters import InstanceTypeOffer, Observation, ProviderInstance
from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    adapters_in_sight,
    at_stake,
    blind_line,
    cli_actor,
    close_adapters,
    error_line,
    handled,
    open_store,
    resolve_instance,
    stdout,
    why_unseen,
)
from gpufsm.cli._placementview import find_placement, show_placement
from gpufsm.cli._providers import build_adapters
from gpufsm.cli._runview import show_run
from gpufsm.cli._ssh import ssh_login
from gpufsm.config import Settings
from gpufsm.errors import GpufsmError
from gpufsm.fleet import Fleet
from gpufsm.ledger import InstanceCost, Ledger
from gpufsm.machines import InstanceState
from gpufsm.reconcile import live_row
from gpufsm.store import InstanceRecord, SqlInstanceStore, TransitionRecord

__all__ = ["GONE", "MISSING", "UNKNOWN", "UNTRACKED", "RemoteRow", "format_age",
           "list_instances", "list_types", "merge_remote", "record_json", "show_history"]

S = InstanceState

#: The remote column of a tracked row: the provider's raw status, or one of these.
MISSING = "missing"  # a live row the provider does not show
GONE = "gone"  # a TERMINATED row the provider no longer shows: as it should be
UNKNOWN = "?"  # the provider's listing failed
#: The state shown for an instance the provider lists and no row tracks.
UNTRACKED = "untracked"


def format_age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``, ``2d04h``: short enough for a table column."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _money(value: float | None) -> float | None:
    """A price for JSON: to the millionth of a dollar, as the store keeps it, so binary
    float noise (0.35000000000000003) never reaches a script that reads it."""
    return None if value is None else round(value, 6)


def record_json(r: InstanceRecord, now: datetime) -> dict[str, object]:
    return {
        "id": r.id, "name": r.name, "provider": r.provider, "state": r.state.value,
        "provider_instance_id": r.provider_instance_id, "instance_type": r.instance_type,
        "region": r.region, "price_per_hour": _money(r.price_per_hour), "ip": r.ip,
        "billable": r.billable, "version": r.version, "created_at": r.created_at.isoformat(),
        "age_seconds": round((now - r.created_at).total_seconds(), 1),
        "last_raw_status": r.last_raw_status, "last_error": r.last_error, "tag": r.tag,
    }


@dataclass(frozen=True)
class RemoteRow:
    """One line of ``instances --remote``: a row, a provider instance, or both."""

    provider: str
    record: InstanceRecord | None
    remote: ProviderInstance | None
    remote_status: str  # raw status, MISSING, GONE or UNKNOWN

    @property
    def untracked(self) -> bool:
        return self.record is None


def merge_remote(records: Sequence[InstanceRecord],
                 listings: Mapping[str, Sequence[ProviderInstance] | None]
                 ) -> list[RemoteRow]:
    """Match rows to provider instances by provider id, then by our tag.

    ``listings`` maps each provider asked to its listing, or None when it failed. Rows
    of providers not asked are left out: nothing can be said about them.
    """
    rows: list[RemoteRow] = []
    claimed: set[tuple[str, str]] = set()
    for record in records:
        if record.provider not in listings:
            continue
        listing = listings[record.provider]
        if listing is None:
            rows.append(RemoteRow(record.provider, record, None, UNKNOWN))
            continue
        found = next((i for i in listing if record.provider_instance_id is not None
                      and i.provider_instance_id == record.provider_instance_id), None)
        if found is None:
            found = next((i for i in listing if i.tag == record.tag), None)
        if found is not None:
            claimed.add((record.provider, found.provider_instance_id))
            rows.append(RemoteRow(record.provider, record, found, found.raw_status))
        else:
            rows.append(RemoteRow(record.provider, record, None,
                                  GONE if record.state is S.TERMINATED else MISSING))
    for provider, listing in sorted(listings.items()):
        for inst in listing or ():
            if (provider, inst.provider_instance_id) not in claimed:
                rows.append(RemoteRow(provider, None, inst, inst.raw_status))
    return rows


@dataclass(frozen=True)
class _View:
    """How to show the rows: which, how wide, and what the listings said of SSH."""

    show_all: bool
    wide: bool
    listings: Mapping[str, Sequence[ProviderInstance] | None]


@handled
def list_instances(*, database_url: str | None, provider: str | None, as_json: bool,
                   remote: bool, show_all: bool = False, wide: bool = False,
                   refresh: bool = False) -> int:
    """The rows (exit 1 if there is no database); with ``remote`` beside the providers'
    listings, with ``refresh`` brought up to date from them first (exit 1 if a provider
    could not be seen while rows there may bill, or its listing failed).

    Finished rows (TERMINATED, or FAILED and not billable) are left out unless
    ``show_all``: a status view lists what is, not everything that ever was.
    """
    with open_store(database_url, existing=True) as store:
        listings: dict[str, Sequence[ProviderInstance] | None] = {}
        blind: dict[str, str] = {}
        if remote or refresh:
            listings, blind = _list_providers(
                store, provider, refresh=refresh,
                consequence=f"not checked (shown as '{UNKNOWN}')" if remote
                else "not refreshed")
        records = store.list(provider=provider)
        ledger = Ledger.read(store, records, now=datetime.now(UTC))
    view = _View(show_all, wide, listings)
    if remote:
        _print_remote(merge_remote(records, listings), ledger, view, as_json=as_json)
    else:
        _print_local(records, ledger, view, as_json=as_json)
    return EXIT_FAILURE if blind else EXIT_OK


def _list_providers(store: SqlInstanceStore, provider: str | None, *, refresh: bool,
                    consequence: str
                    ) -> tuple[dict[str, Sequence[ProviderInstance] | None], dict[str, str]]:
    """One listing per provider in sight (None where it failed), and the providers that
    could not be seen (provider → why), each named on stderr. With ``refresh`` the
    listings are applied to the rows through the engine first."""
    adapters, unseen = adapters_in_sight(Settings(), store, [provider] if provider else None)
    listings: dict[str, Sequence[ProviderInstance] | None] = dict.fromkeys(unseen)
    blind = dict(unseen)
    try:
        for adapter in adapters:
            try:
                listings[adapter.name] = adapter.list_instances()
            except GpufsmError as exc:
                listings[adapter.name] = None
                blind[adapter.name] = why_unseen(exc)
        if refresh:
            _apply(Fleet(store, adapters, actor=cli_actor()),
                   merge_remote(store.list(provider=provider),
                                {k: v for k, v in listings.items() if k not in unseen}))
    finally:
        close_adapters(adapters)
    for name, why in sorted(blind.items()):
        error_line(blind_line(name, why, at_stake(store, name), consequence))
    return listings, blind


def _apply(fleet: Fleet, rows: Sequence[RemoteRow]) -> None:
    """What the listings show, applied as the reconciler would apply it, minus what
    only the reconciler may do: a row missing from one good listing is not concluded
    gone (the reconciler counts missing listings and confirms with a GET), and nothing
    is terminated. A failed listing is an UNKNOWN observation: it moves no state."""
    items: list[tuple[InstanceRecord, Observation]] = []
    for row in rows:
        if row.record is None or _finished(row.record):
            continue
        if row.remote is not None:  # a failed listing (UNKNOWN) has nothing to apply
            items.append((row.record, Observation.present(row.remote)))

    def failed(instance_id: str, exc: Exception) -> None:
        error_line(f"{instance_id[:8]}: not refreshed: {exc}")

    fleet.observe_many(items, on_error=failed)


def _finished(r: InstanceRecord) -> bool:
    """Over and costing nothing: hidden from the status view unless --all (what the
    reconciler no longer watches: ``live_row``)."""
    return not live_row(r)


def _print_local(records: Sequence[InstanceRecord], ledger: Ledger, view: _View, *,
                 as_json: bool) -> None:
    now = ledger.now
    shown = [r for r in records if view.show_all or not _finished(r)]
    costs = {row.record.id: row for row in ledger.rows}
    ssh = _ssh_seen(view.listings)
    if as_json:
        sys.stdout.write(json.dumps([_status_json(r, costs.get(r.id), ssh, now)
                                     for r in shown], indent=2) + "\n")
        return
    _print_table(_headers(remote=False), [_local_cells(r, costs.get(r.id), ssh, now)
                                          for r in shown], wide=view.wide)
    _footer(shown, costs, hidden=len(records) - len(shown))


def _print_remote(rows: Sequence[RemoteRow], ledger: Ledger, view: _View, *,
                  as_json: bool) -> None:
    now = ledger.now
    # A finished row the provider agrees is gone says nothing; one it still shows does.
    rows = [row for row in rows if view.show_all or row.record is None
            or not (_finished(row.record) and row.remote_status == GONE)]
    costs = {row.record.id: row for row in ledger.rows}
    ssh = _ssh_seen(view.listings)
    if as_json:
        sys.stdout.write(json.dumps([_row_json(row, costs, ssh, now) for row in rows],
                                    indent=2) + "\n")
        return
    _print_table(_headers(remote=True), [_remote_cells(row, costs, ssh, now)
                                         for row in rows], wide=view.wide)
    untracked = sum(row.untracked for row in rows)
    missing = sum(row.remote_status == MISSING for row in rows)
    if untracked or missing:
        stdout.print(f"{untracked} untracked on the providers, {missing} rows missing "
                     "there; `gpufsm reconcile --once` reports them, "
                     "`--orphans adopt` takes ours in", highlight=False)


#: What a person copies into the next command: never cut, never wrapped.
_WHOLE = ("id", "type", "IP", "SSH")
#: The columns a narrow terminal drops, first to last; id, state, type and IP stay.
_DROP_ORDER = ("region", "provider", "tag", "name", "uptime", "$/h", "cost", "SSH", "remote")
#: The narrowest a folded column is counted at when deciding what fits.
_FOLDED = 6


def _headers(*, remote: bool) -> list[str]:
    headers = ["id", "name", "provider", "state", "type", "region", "$/h", "IP", "SSH",
               "uptime", "cost"]
    return [*headers, "remote", "tag"] if remote else headers


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
                 wide: bool) -> None:
    """The table at the terminal's width. Ids, types, IPs and SSH lines are never cut:
    the other columns fold, and when even that does not fit, the least useful columns
    are left out (and the line under the table names them). Should id, state, type and
    IP alone not fit, the table is printed wider than the terminal: a line the terminal
    wraps still holds the whole id, where a table squeezed to fit would cut it.
    ``wide``: every column at its full width, whatever the terminal."""
    keep = list(headers)
    while not wide and _least_width(keep, headers, rows) > stdout.width:
        droppable = [h for h in _DROP_ORDER if h in keep]
        if not droppable:
            break
        keep.remove(droppable[0])
    index = [headers.index(h) for h in keep]
    table = Table(*[Column(h, no_wrap=True, min_width=36 if h == "id" else None)
                    if h in _WHOLE or wide else Column(h, overflow="fold") for h in keep])
    for cells in rows:
        table.add_row(*[cells[i] for i in index])
    width = stdout.width
    if wide:
        width = Measurement.get(stdout, stdout.options.update_width(100_000), table).maximum
    width = max(width, _least_width(keep, headers, rows))
    if width == stdout.width:
        stdout.print(table)
    else:
        Console(file=stdout.file, width=width, force_terminal=stdout.is_terminal,
                color_system="auto" if stdout.color_system else None).print(table)
    left_out = [h for h in headers if h not in keep]
    if left_out:
        stdout.print(f"too narrow for {', '.join(left_out)}: --wide shows every column",
                     highlight=False, markup=False, soft_wrap=True)


def _least_width(keep: Sequence[str], headers: Sequence[str],
                 rows: Sequence[Sequence[str]]) -> int:
    """The narrowest table of the ``keep`` columns with nothing of ids, types, IPs and
    SSH lines cut: those at their widest cell, the others folded."""
    total = 1  # the left edge; each column adds its padding (2) and its right edge (1)
    for header in keep:
        i = headers.index(header)
        widest = max([len(header), *(Text.from_markup(cells[i]).cell_len for cells in rows)])
        total += 3 + (max(widest, 36 if header == "id" else 0) if header in _WHOLE
                      else min(widest, _FOLDED))
    return total


def _footer(shown: Sequence[InstanceRecord], costs: Mapping[str, InstanceCost],
            *, hidden: int) -> None:
    burn = sum(costs[r.id].burn for r in shown if r.id in costs)
    spent = sum(costs[r.id].cost for r in shown if r.id in costs)
    stdout.print(f"total ${burn:.2f}/h now, ${spent:.2f} so far", highlight=False)
    if hidden:
        stdout.print(f"{hidden} finished row{'' if hidden == 1 else 's'} hidden "
                     "(TERMINATED, or FAILED and not billing): --all shows them",
                     highlight=False)


@handled
def show_history(given: str, *, database_url: str | None, as_json: bool) -> int:
    """One instance's transitions; the id is taken as every command takes it."""
    with open_store(database_url, existing=True) as store:
        placement = find_placement(store, given)
        if placement is not None:  # a request for a GPU: its attempts, grouped
            return show_placement(store, placement, as_json=as_json)
        run_id = store.find_run(given)
        if run_id is not None:  # a recovering run: its generations, in order
            return show_run(store, run_id, as_json=as_json)
        record = resolve_instance(store, given)
        rows = store.history(record.id)
    if as_json:
        sys.stdout.write(json.dumps([{
            "version": h.version, "at": h.at.isoformat(),
            "from": h.from_state.value if h.from_state else None, "to": h.to_state.value,
            "event": h.event.value, "kind": h.kind.value, "actor": h.actor, "reason": h.reason,
            "raw_status": h.raw_status} for h in rows], indent=2) + "\n")
        return EXIT_OK
    stdout.print(_history_table(record.id, rows))
    if record.placement_id is not None:
        stdout.print(f"an attempt of placement {record.placement_id}: `gpufsm history "
                     f"{record.placement_id[:8]}` shows every attempt", highlight=False,
                     soft_wrap=True)
    if record.run_id is not None:
        stdout.print(f"generation {record.generation} of run {record.run_id}: `gpufsm "
                     f"history {record.run_id[:8]}` shows every generation", highlight=False,
                     soft_wrap=True)
    return EXIT_OK


def _history_table(instance_id: str, rows: Sequence[TransitionRecord]) -> Table:
    table = Table("v", "at", "from", "to", "event", "kind", "actor", "raw", "reason",
                  title=f"history of {instance_id}")
    for h in rows:
        table.add_row(str(h.version), h.at.strftime("%H:%M:%S"),
                      h.from_state.value if h.from_state else "", h.to_state.value,
                      h.event.value, h.kind.value, escape(h.actor), escape(h.raw_status or ""),
                      escape(h.reason or ""))
    return table


def _price(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else ""


def _ssh_seen(listings: Mapping[str, Sequence[ProviderInstance] | None]
              ) -> dict[tuple[str, str], ProviderInstance]:
    """The listed instances by (provider, provider id): where RunPod and Vast.ai say
    which host and port their SSH is mapped to. Without a listing the port is 22."""
    return {(provider, inst.provider_instance_id): inst
            for provider, listing in listings.items() for inst in listing or ()}


def _ssh(r: InstanceRecord, ssh: Mapping[tuple[str, str], ProviderInstance]) -> str:
    if r.state is not S.RUNNING:
        return ""
    seen = ssh.get((r.provider, r.provider_instance_id or ""))
    if seen is not None and seen.ssh_port:
        return ssh_login(r.provider, seen.ssh_host or r.ip, seen.ssh_port)
    return ssh_login(r.provider, r.ip)


def _uptime(r: InstanceRecord, cost: InstanceCost | None, now: datetime) -> float | None:
    """Seconds since it began to bill (its first billing interval), else since it was
    created; None once it is finished (an age that grows forever says nothing)."""
    if _finished(r):
        return None
    since = cost.intervals[0].start if cost is not None else r.created_at
    return (now - since).total_seconds()


def _local_cells(r: InstanceRecord, cost: InstanceCost | None,
                 ssh: Mapping[tuple[str, str], ProviderInstance], now: datetime) -> list[str]:
    up = _uptime(r, cost, now)
    return [r.id, escape(r.name or ""), r.provider, r.state.value,
            escape(r.instance_type or ""), r.region or "",
            "" if _finished(r) else _price(r.price_per_hour), r.ip or "",
            escape(_ssh(r, ssh)), "" if up is None else format_age(up),
            f"{cost.cost:.2f}" if cost is not None else ""]


def _remote_cells(row: RemoteRow, costs: Mapping[str, InstanceCost],
                  ssh: Mapping[tuple[str, str], ProviderInstance], now: datetime
                  ) -> list[str]:
    if row.record is not None:
        status = escape(row.remote_status)
        if row.remote_status in (MISSING, UNKNOWN):
            status = f"[yellow]{status}[/yellow]"
        return [*_local_cells(row.record, costs.get(row.record.id), ssh, now), status, ""]
    inst = row.remote
    assert inst is not None
    login = ssh_login(row.provider, inst.ssh_host or inst.ip, inst.ssh_port)
    return [escape(inst.provider_instance_id), escape(inst.name or ""), row.provider,
            f"[yellow]{UNTRACKED}[/yellow]", escape(inst.instance_type or ""),
            inst.region or "", _price(inst.price_per_hour), inst.ip or "", escape(login),
            "", "", escape(inst.raw_status), escape(inst.tag or "(not ours)")]


def _status_json(r: InstanceRecord, cost: InstanceCost | None,
                 ssh: Mapping[tuple[str, str], ProviderInstance], now: datetime
                 ) -> dict[str, object]:
    up = _uptime(r, cost, now)
    return {**record_json(r, now), "ssh": _ssh(r, ssh) or None,
            "uptime_seconds": None if up is None else round(up, 1),
            "cost_so_far": _money(cost.cost) if cost is not None else 0.0,
            "burn_per_hour": _money(cost.burn) if cost is not None else 0.0}


def _row_json(row: RemoteRow, costs: Mapping[str, InstanceCost],
              ssh: Mapping[tuple[str, str], ProviderInstance], now: datetime
              ) -> dict[str, object]:
    if row.record is not None:
        return {**_status_json(row.record, costs.get(row.record.id), ssh, now),
                "tracked": True, "remote_status": row.remote_status}
    inst = row.remote
    assert inst is not None
    return {
        "id": None, "name": inst.name, "provider": row.provider, "state": UNTRACKED,
        "provider_instance_id": inst.provider_instance_id,
        "instance_type": inst.instance_type, "region": inst.region,
        "price_per_hour": _money(inst.price_per_hour), "ip": inst.ip, "tag": inst.tag,
        "ssh": ssh_login(row.provider, inst.ssh_host or inst.ip, inst.ssh_port) or None,
        "ours": inst.tag is not None, "tracked": False, "remote_status": inst.raw_status,
    }


@handled
def list_types(*, provider: str | None, available: bool, as_json: bool) -> int:
    """Every offer of the configured providers, cheapest first."""
    adapters = build_adapters(Settings(), [provider] if provider else None)
    offers: list[InstanceTypeOffer] = []
    failed = False
    try:
        for adapter in adapters:
            try:
                offers.extend(adapter.instance_types())
            except GpufsmError as exc:
                failed = True
                error_line(f"{adapter.name}: cannot list instance types: {exc}")
    finally:
        close_adapters(adapters)
    if available:
        offers = [o for o in offers if o.available]
    offers.sort(key=lambda o: (o.price_per_hour, o.provider, o.name))
    if as_json:
        sys.stdout.write(json.dumps([{
            "provider": o.provider, "name": o.name, "price_per_hour": _money(o.price_per_hour),
            "gpus": o.gpus, "gpu": o.gpu_description, "regions": list(o.regions),
            "available": o.available, "offer_id": o.offer_id,
            "spot_price_per_hour": _money(o.spot_price_per_hour)} for o in offers],
            indent=2) + "\n")
    else:
        table = Table("provider", "type", "gpus", "gpu", "$/h", "capacity in",
                      title="instance types, cheapest first")
        for o in offers:
            table.add_row(o.provider, escape(o.name), str(o.gpus or ""),
                          escape(o.gpu_description or ""), f"{o.price_per_hour:.2f}",
                          escape(", ".join(o.regions)) if o.regions
                          else "[dim]none now[/dim]")
        stdout.print(table)
    return EXIT_FAILURE if failed else EXIT_OK
