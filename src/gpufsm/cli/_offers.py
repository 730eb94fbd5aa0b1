"""``offers``: the machines every configured provider sells that meet a GPU request,
cheapest first.

The person asks for a GPU (``--gpu A100:2``), not a provider, so this command reads
every configured provider's catalog through :class:`gpufsm.placement.Catalog` and ranks
the offers with :func:`gpufsm.placement.rank`: the table is the order placement would
try them in, and ``--all`` prints :func:`gpufsm.placement.explain`'s reason beside the
rest, so the command and the ranking can never disagree about what matches.

A provider whose catalog cannot be read is one warning line, not the end of the
command: the others' offers are still worth seeing. Only when no provider answered is
there nothing to show (exit 1). Bad input names the flag (exit 2), as everywhere in
this CLI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from gpufsm.adapters import ProviderAdapter
from gpufsm.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    close_adapters,
    configured_providers,
    error_line,
    handled,
    stderr,
    stdout,
)
from gpufsm.cli._placing import OfferQuery, requirements_from
from gpufsm.cli._providers import build_adapters
from gpufsm.clock import SystemClock
from gpufsm.config import Settings
from gpufsm.errors import ValidationError
from gpufsm.placement import (
    Catalog,
    GpuModel,
    Listing,
    Offer,
    Requirements,
    explain,
    rank,
)

__all__ = ["OfferQuery", "offer_json", "offers", "requirements_from", "show_offers"]

def _adapters(settings: Settings, req: Requirements) -> list[ProviderAdapter]:
    """Named providers (each must have its key), else every configured one not excluded.

    An excluded provider is not asked at all: its offers could never be shown as
    matching, and asking costs a call against its rate limit.
    """
    if req.providers:
        return build_adapters(settings, req.providers)
    configured = configured_providers(settings)
    wanted = [name for name in configured if name not in req.exclude_providers]
    if not wanted and configured:
        raise ValidationError("--exclude-provider", "excludes every configured provider ("
                              f"{', '.join(configured)}); nothing is left to ask")
    return build_adapters(settings, wanted or None)  # none configured: names the keys


def _listing(req: Requirements) -> tuple[Listing, tuple[str, ...]]:
    """Every offer of the providers to ask, and the names of those asked."""
    adapters = _adapters(Settings(), req)
    try:
        catalog = Catalog({a.name: a for a in adapters}, SystemClock())
        return catalog.offers(), catalog.providers
    finally:
        close_adapters(adapters)


def offer_json(offer: Offer, *, reason: str | None = None,
               with_reason: bool = False) -> dict[str, object]:
    """One offer for scripts: every ``Offer`` field under its own name; ``gpu`` is the
    canonical model or null when gpufsm does not know it (``gpu_raw`` keeps the
    provider's words); money to the millionth of a dollar, as a number."""
    row: dict[str, object] = {
        "provider": offer.provider, "instance_type": offer.instance_type,
        "region": offer.region,
        "gpu": offer.gpu.name if isinstance(offer.gpu, GpuModel) else None,
        "gpu_raw": offer.gpu_raw, "count": offer.count, "vram_gb": offer.vram_gb,
        "price_per_hour": round(offer.price_per_hour, 6),
        "interruptible": offer.interruptible, "available": offer.available,
        "offer_id": offer.offer_id,
    }
    if with_reason:
        row["reason"] = reason
    return row


def _rows(listing: Listing, req: Requirements, show_all: bool
          ) -> list[tuple[Offer, str | None]]:
    """The ranked offers; with ``show_all`` then every other one, cheapest first, with
    why it does not match. The first row is always the one placement would try first."""
    ranked = rank(listing.offers, req)
    rows: list[tuple[Offer, str | None]] = [(o, None) for o in ranked]
    if show_all:
        matching = set(ranked)
        rest = sorted((o for o in listing.offers if o not in matching),
                      key=lambda o: o.sort_key)
        rows += [(o, explain(o, req)) for o in rest]
    return rows


def _what(req: Requirements) -> str:
    gpus = " or ".join(req.gpus) or "any GPU"
    return f"{req.count}x {gpus}" if req.count > 1 else gpus


def _price(amount: float) -> str:
    return f"{amount:.2f}" if round(amount, 2) == amount else f"{amount:.4f}"


def _cells(offer: Offer, reason: str | None, show_all: bool) -> list[str]:
    cells = [offer.provider, offer.instance_type, offer.region or "-",
             f"{offer.count}x {offer.gpu}",
             f"{offer.vram_gb:g} GB" if offer.vram_gb is not None else "?",
             _price(offer.price_per_hour), "yes" if offer.interruptible else "no",
             "yes" if offer.available else "sold out"]
    return [*cells, reason or ""] if show_all else cells


#: (header, None for a column whose cells never break, or the narrowest a column that
#: folds may get): a folding column wraps at spaces and splits a long word rather than
#: cutting it, so a narrow terminal costs lines, never characters.
_COLUMNS: tuple[tuple[str, int | None], ...] = (
    ("provider", None), ("type", 12), ("region", 12), ("GPU", None), ("VRAM", None),
    ("$/h", None), ("spot", None), ("available", None))
_REASON_COLUMN = ("why not", 30)


def _table(rows: Sequence[list[str]], title: str, show_all: bool, *, fit: int) -> Table:
    """Nothing a person copies into ``gpufsm launch`` is ever cut short (no ellipsis):
    short columns keep their full width; type, region and the reason fold.

    ``fit`` is the terminal's width. Where even the columns' minimums do not fit in it,
    rich would squeeze the folding columns to nothing, so the table is then as wide as
    those minimums need and the terminal wraps its lines: untidy, but nothing lost.
    """
    specs = [*_COLUMNS, _REASON_COLUMN] if show_all else list(_COLUMNS)
    columns = []
    for i, (header, fold_width) in enumerate(specs):
        widest = max([len(header), *(len(r[i]) for r in rows)])
        columns.append(Column(header, justify="right" if header == "$/h" else "left",
                              no_wrap=fold_width is None, overflow="fold",
                              min_width=min(widest, fold_width or widest)))
    # each cell: its minimum, a space either side and the line on its left; one more line
    least = sum(c.min_width or 0 for c in columns) + 3 * len(columns) + 1
    table = Table(*columns, title=title, width=least if least > fit else None)
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def _report(listing: Listing, asked: Sequence[str]) -> int:
    """One warning line per provider that did not answer; exit 1 only if none did."""
    for name, error in sorted(listing.failures.items()):
        why = error.replace(f": {name}: ", ": ", 1)  # the line names the provider already
        stderr.print(f"[yellow]warning:[/yellow] {escape(name)}: catalog not read "
                     f"({escape(why)}); its offers are missing below",
                     soft_wrap=True, highlight=False)
    if len(listing.failures) == len(asked):
        error_line(f"no provider answered ({', '.join(asked)}); nothing to rank")
        return EXIT_FAILURE
    return EXIT_OK


@handled
def show_offers(query: OfferQuery, *, show_all: bool, as_json: bool) -> int:
    """Read the catalogs, rank, print; the exit status of ``gpufsm offers``."""
    req = requirements_from(query)
    listing, asked = _listing(req)
    status = _report(listing, asked)
    if status != EXIT_OK:
        return status
    rows = _rows(listing, req, show_all)
    if as_json:
        sys.stdout.write(json.dumps([offer_json(o, reason=r, with_reason=show_all)
                                     for o, r in rows], indent=2) + "\n")
    else:
        title = f"offers for {_what(req)}, cheapest first"
        table = _table([_cells(o, r, show_all) for o, r in rows], title, show_all,
                       fit=stdout.width)
        stdout.print(table, crop=False)
    if not any(reason is None for _, reason in rows):
        hint = "" if show_all else "; --all shows every offer and why it does not match"
        stderr.print(f"no offer matches{hint}", soft_wrap=True, highlight=False)
    return EXIT_OK


def offers(
    *,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", help="GPU model or family, several comma-separated, optionally :COUNT, "
        "e.g. A100, A100-80GB:8, H100,A100 (default: any GPU).")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", help="GPUs per machine (default 1, or the :COUNT of --gpu).")] = None,
    max_price: Annotated[float | None, typer.Option(
        "--max-price", help="Highest $/h for the whole machine.")] = None,
    min_vram: Annotated[float | None, typer.Option(
        "--min-vram", help="Least VRAM per GPU, GB.")] = None,
    provider: Annotated[list[str] | None, typer.Option(
        "--provider", "-p", help="Only these providers (repeatable; each needs its key). "
        "Default: every provider with a key set.")] = None,
    exclude_provider: Annotated[list[str] | None, typer.Option(
        "--exclude-provider", help="Not these providers (repeatable; not asked at all).")
    ] = None,
    region: Annotated[list[str] | None, typer.Option(
        "--region", help="Only these regions (repeatable; the provider's names).")] = None,
    interruptible: Annotated[bool, typer.Option(
        "--interruptible", help="Spot/bid prices are acceptable too (cheaper, may be "
        "taken back).")] = False,
    show_all: Annotated[bool, typer.Option(
        "--all", help="Also show the offers that do not match or are sold out, with why "
        "(after the matching ones).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Machines that meet a GPU request, from every configured provider, cheapest first.

    Ties are broken by provider, type, region: the order placement tries them in. A
    provider whose catalog cannot be read is a warning and the others are still shown.
    Exit status: 0 when at least one provider answered (even with no match), 1 when
    none did, 2 for bad usage (a flag, a provider without its key).
    """
    query = OfferQuery(gpu=gpu, count=count, max_price=max_price, min_vram=min_vram,
                       providers=tuple(provider or ()),
                       exclude_providers=tuple(exclude_provider or ()),
                       regions=tuple(region or ()), interruptible=interruptible)
    raise typer.Exit(show_offers(query, show_all=show_all, as_json=as_json))
