"""``instances``, ``history`` and ``types``: what we track, what the providers show,
what they sell.

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

from rich.markup import escape
from rich.table import Column, Table

from gpufsm.adapters import InstanceTypeOffer, ProviderInstance
from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    adapters_in_sight,
    at_stake,
    blind_line,
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
from gpufsm.config import Settings
from gpufsm.errors import GpufsmError
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord, TransitionRecord

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


@handled
def list_instances(*, database_url: str | None, provider: str | None, as_json: bool,
                   remote: bool) -> int:
    """The rows (exit 1 if there is no database); with ``remote`` beside the providers'
    listings (exit 1 if a provider could not be seen while rows there may bill, or its
    listing failed)."""
    with open_store(database_url, existing=True) as store:
        records = store.list(provider=provider)
        if not remote:
            _print_local(records, as_json=as_json)
            return EXIT_OK
        adapters, unseen = adapters_in_sight(Settings(), store,
                                             [provider] if provider else None)
        listings: dict[str, Sequence[ProviderInstance] | None] = dict.fromkeys(unseen)
        blind = dict(unseen)
        try:
            for adapter in adapters:
                try:
                    listings[adapter.name] = adapter.list_instances()
                except GpufsmError as exc:
                    listings[adapter.name] = None
                    blind[adapter.name] = why_unseen(exc)
        finally:
            close_adapters(adapters)
        for name, why in sorted(blind.items()):
            error_line(blind_line(name, why, at_stake(store, name),
                                  f"not checked (shown as '{UNKNOWN}')"))
    _print_remote(merge_remote(records, listings), as_json=as_json)
    return EXIT_FAILURE if blind else EXIT_OK


def _print_local(records: Sequence[InstanceRecord], *, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        sys.stdout.write(json.dumps([record_json(r, now) for r in records], indent=2) + "\n")
        return
    table = _table(remote=False)
    for r in records:
        table.add_row(*_local_cells(r, now))
    stdout.print(table)


def _print_remote(rows: Sequence[RemoteRow], *, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        sys.stdout.write(json.dumps([_row_json(row, now) for row in rows], indent=2) + "\n")
        return
    table = _table(remote=True)
    for row in rows:
        table.add_row(*_remote_cells(row, now))
    stdout.print(table)
    untracked = sum(row.untracked for row in rows)
    missing = sum(row.remote_status == MISSING for row in rows)
    if untracked or missing:
        stdout.print(f"{untracked} untracked on the providers, {missing} rows missing "
                     "there; `gpufsm reconcile --once` reports them, "
                     "`--orphans adopt` takes ours in", highlight=False)


@handled
def show_history(given: str, *, database_url: str | None, as_json: bool) -> int:
    """One instance's transitions; the id is taken as every command takes it."""
    with open_store(database_url, existing=True) as store:
        placement = find_placement(store, given)
        if placement is not None:  # a request for a GPU: its attempts, grouped
            return show_placement(store, placement, as_json=as_json)
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
                     f"{record.placement_id[:8]}` shows every attempt", highlight=False)
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


def _table(*, remote: bool) -> Table:
    # The id is what a person copies into the next command: never cut it short.
    cols: list[str | Column] = [Column("id", no_wrap=True, min_width=8), "name", "provider",
                                "state", "type", "region", "$/h", "IP",
                                "age"]
    if remote:
        cols += ["remote", "tag"]
    return Table(*cols)


def _price(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else ""


def _local_cells(r: InstanceRecord, now: datetime) -> list[str]:
    return [r.id[:8], escape(r.name or ""), r.provider, r.state.value, r.instance_type or "",
            r.region or "", _price(r.price_per_hour), r.ip or "",
            format_age((now - r.created_at).total_seconds())]


def _remote_cells(row: RemoteRow, now: datetime) -> list[str]:
    if row.record is not None:
        status = escape(row.remote_status)
        if row.remote_status in (MISSING, UNKNOWN):
            status = f"[yellow]{status}[/yellow]"
        return [*_local_cells(row.record, now), status, ""]
    inst = row.remote
    assert inst is not None
    return [escape(inst.provider_instance_id), escape(inst.name or ""), row.provider,
            f"[yellow]{UNTRACKED}[/yellow]", inst.instance_type or "", inst.region or "",
            _price(inst.price_per_hour), inst.ip or "", "", escape(inst.raw_status),
            escape(inst.tag or "(not ours)")]


def _row_json(row: RemoteRow, now: datetime) -> dict[str, object]:
    if row.record is not None:
        return {**record_json(row.record, now), "tracked": True,
                "remote_status": row.remote_status}
    inst = row.remote
    assert inst is not None
    return {
        "id": None, "name": inst.name, "provider": row.provider, "state": UNTRACKED,
        "provider_instance_id": inst.provider_instance_id,
        "instance_type": inst.instance_type, "region": inst.region,
        "price_per_hour": _money(inst.price_per_hour), "ip": inst.ip, "tag": inst.tag,
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
