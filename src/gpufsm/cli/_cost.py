"""``cost``: what the machines cost, from the history, and what they burn now.

The figures come from the spend ledger (``gpufsm.ledger``): each machine's billing
intervals, read from the transitions the database already holds, times its price. So
they are not a cache's guess: what is exact is exact, and each figure that rests on an
estimate (an unknown storage price, a FAILED machine billed at its full price) is
marked ``*`` with the reason in a footnote.

Read-only: the command opens an existing database, never creates one, writes nothing
and calls no provider.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Column, Table

from gpufsm.cli._common import EXIT_OK, EXIT_USAGE, error_line, handled, open_store, stdout
from gpufsm.clock import Clock, SystemClock
from gpufsm.ledger import BillingInterval, GroupBy, GroupTotal, InstanceCost, Ledger
from gpufsm.store import InstanceRecord

__all__ = ["CLOCK", "PRICE_CAVEAT", "cost_json", "parse_by", "parse_since", "show_cost"]

#: Where "now" comes from; tests put a FakeClock here.
CLOCK: Clock = SystemClock()

#: Said under every report that prices a machine: what the rate is and its one limit.
PRICE_CAVEAT = ("rates are the prices each provider reported; a price change counts from "
                "the reconcile pass that saw it (docs/cost.md)")


class _UsageError(ValueError):
    """A flag's value is wrong: one line naming the flag, exit 2."""


def parse_since(text: str) -> datetime:
    """``--since``: a date (2026-12-01, midnight) or a date and time (2026-12-01T09:30),
    in UTC unless it carries an offset (``Z``, ``+02:00``)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _UsageError(f"--since: expected a date (2026-12-01) or a date and time "
                          f"(2026-12-01T09:30), got {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_by(text: str) -> GroupBy:
    """``--by``: provider, name or type."""
    try:
        return GroupBy(text.strip().lower())
    except ValueError:
        choices = ", ".join(g.value for g in GroupBy)
        raise _UsageError(f"--by: expected one of {choices}, got {text!r}") from None


def show_cost(*, database_url: str | None, since: str | None, by: str, as_json: bool) -> int:
    """Print the report; exit 2 for a bad flag (before the database is opened)."""
    try:
        window = parse_since(since) if since is not None else None
        group_by = parse_by(by)
    except _UsageError as exc:
        error_line(exc)
        return EXIT_USAGE
    return _report(database_url=database_url, since=window, by=group_by, as_json=as_json)


@handled
def _report(*, database_url: str | None, since: datetime | None, by: GroupBy,
            as_json: bool) -> int:
    now = CLOCK.now()
    with open_store(database_url, existing=True) as store:
        records = store.list()
        ledger = Ledger.read(store, records, now=now, since=since)
    if as_json:
        sys.stdout.write(json.dumps(cost_json(ledger, by), indent=2) + "\n")
        return EXIT_OK
    if not records:
        stdout.print("no instances in the database: nothing has cost anything yet",
                     highlight=False)
        return EXIT_OK
    if not ledger.rows:
        stdout.print(f"nothing billed{_window(ledger)}: $0.00, burning $0.00/h now",
                     highlight=False)
        return EXIT_OK
    for group in ledger.groups(by):
        stdout.print(_group_table(group, by, ledger.now))
    _totals(ledger)
    return EXIT_OK


def _window(ledger: Ledger) -> str:
    return f" since {ledger.since.isoformat()}" if ledger.since is not None else ""


def _usd(value: float) -> str:
    """Dollars and cents; below a dollar to the hundredth of a cent, so a short run's
    few tenths of a cent do not read as nothing."""
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def _money(value: float) -> float:
    """Dollars for JSON: to the millionth, as the store keeps prices, so float noise
    (0.35000000000000003) never reaches a script."""
    return round(value, 6)


def _group_table(group: GroupTotal, by: GroupBy, now: datetime) -> Table:
    # The id is what a person copies into the next command, and the figures are what
    # the command is for: those never wrap or get cut short. What the machine is (its
    # name and type, less the one the group already says) wraps, and is never cut.
    def fixed(header: str) -> Column:
        return Column(header, justify="right", no_wrap=True)

    table = Table(Column("id", no_wrap=True, min_width=36), Column("state", no_wrap=True),
                  fixed("hours"), fixed("$/h now"), fixed("cost"),
                  Column(_what_header(by), overflow="fold"),
                  title=f"{by.value} {escape(group.key)}", title_justify="left",
                  show_footer=True, box=box.SIMPLE_HEAD, show_edge=False,
                  collapse_padding=True, pad_edge=False)
    for row in group.rows:
        r = row.record
        table.add_row(r.id, r.state.value, f"{sum(i.hours(now) for i in row.intervals):.2f}",
                      _rate(row.burn) if any(i.is_open for i in row.intervals) else "",
                      _usd(row.cost) + ("*" if row.estimated else ""), _what(r, by))
    table.columns[0].footer = "total"
    table.columns[3].footer = _rate(group.burn)
    table.columns[4].footer = _usd(group.cost) + ("*" if group.estimated else "")
    return table


def _what_header(by: GroupBy) -> str:
    return {GroupBy.PROVIDER: "name type", GroupBy.NAME: "provider type",
            GroupBy.TYPE: "provider name"}[by]


def _what(r: InstanceRecord, by: GroupBy) -> str:
    """The two of provider, name and type that the group does not already say."""
    parts = {GroupBy.PROVIDER: (r.name or "-", r.instance_type or "-"),
             GroupBy.NAME: (r.provider, r.instance_type or "-"),
             GroupBy.TYPE: (r.provider, r.name or "-")}[by]
    return escape(" ".join(parts))


def _rate(per_hour: float) -> str:
    """$/h: cents, or tenths of a cent for the small rates of stopped disks."""
    return f"{per_hour:,.4f}" if 0 < per_hour < 0.1 else f"{per_hour:,.2f}"


def _totals(ledger: Ledger) -> None:
    billing = sum(1 for row in ledger.rows if row.burn > 0)
    stdout.print(f"total {_usd(ledger.total)}{_window(ledger)} over {len(ledger.rows)} "
                 f"instance{'' if len(ledger.rows) == 1 else 's'}; burning "
                 f"${_rate(ledger.burn_rate)}/h now ({billing} billing)", highlight=False)
    estimates = ledger.estimates()
    if estimates:
        stdout.print("* estimates:", highlight=False)
        for why, dollars in estimates.items():
            stdout.print(f"  {_usd(dollars)}: {escape(why)}", highlight=False)
    stdout.print(f"note: {PRICE_CAVEAT}", highlight=False, style="dim")


def _interval_json(item: BillingInterval, now: datetime) -> dict[str, Any]:
    return {"state": item.state.value, "start": item.start.isoformat(),
            "end": item.end.isoformat() if item.end is not None else None,
            "hours": round(item.hours(now), 6), "rate": _money(item.rate),
            "basis": item.basis.value, "cost": _money(item.cost(now)),
            "estimate": item.estimate}


def _row_json(row: InstanceCost, now: datetime) -> dict[str, Any]:
    r = row.record
    return {"id": r.id, "name": r.name, "provider": r.provider, "type": r.instance_type,
            "state": r.state.value, "price_per_hour": (None if r.price_per_hour is None
                                                       else _money(r.price_per_hour)),
            "cost": _money(row.cost), "burn_per_hour": _money(row.burn),
            "estimated": row.estimated, "estimates": list(row.estimates),
            "intervals": [_interval_json(i, now) for i in row.intervals]}


def cost_json(ledger: Ledger, by: GroupBy) -> dict[str, Any]:
    """The report as data. Keys are stable; money is a number of US dollars."""
    return {
        "now": ledger.now.isoformat(),
        "since": ledger.since.isoformat() if ledger.since is not None else None,
        "by": by.value,
        "currency": "USD",
        "total": _money(ledger.total),
        "burn_per_hour": _money(ledger.burn_rate),
        "groups": [{"key": g.key, "cost": _money(g.cost), "burn_per_hour": _money(g.burn),
                    "estimated": g.estimated, "instances": [row.record.id for row in g.rows]}
                   for g in ledger.groups(by)],
        "instances": [_row_json(row, ledger.now) for row in ledger.rows],
        "estimates": [{"reason": why, "cost": _money(dollars)}
                      for why, dollars in ledger.estimates().items()],
        "price_note": PRICE_CAVEAT,
    }
