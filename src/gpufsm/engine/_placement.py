"""Launch by requirements: ranked offers tried in order, and never two machines kept.

SkyPilot re-runs its optimizer after each failure and dstack walks price-ordered offers;
neither proves that failover cannot leave two machines billing for one request. Here
every attempt is an instance row of its own, linked to its placement, and the placement
keeps exactly one winner, claimed with one conditional UPDATE (``store.claim_winner``):

* a refusal for capacity or quota (the offer, not the request, is the problem) is
  recorded on the attempt's row (FAILED, not billable, with the provider's reason),
  the offer is blocked for a while in the database (every process skips it), and the
  next offer is tried;
* an attempt whose outcome is unknown (a timeout after the request was sent, a lost
  answer) was already looked for once by tag (``launch``); not found, its row stays
  CREATING and billable, and the next offer is tried: if its machine ever turns up, it
  is adopted, finds another winner or a FAILED placement, and is terminated as surplus
  (the reconciler's sweep, ``surplus``);
* an attempt that produced a machine claims the win; if another attempt's machine won
  meanwhile (adopted by a reconciler), this one is surplus and terminated at once.

A cap on attempts and on total time; when nothing is placed, one error lists every
attempt and its reason.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gpufsm.engine._commands import terminate
from gpufsm.engine._context import Engine
from gpufsm.engine._launch import launch
from gpufsm.errors import (
    GpufsmError,
    InsufficientCapacity,
    PlacementFailed,
    ProviderError,
    QuotaExceeded,
    TemporaryProviderError,
    ValidationError,
)
from gpufsm.machines import InstanceState
from gpufsm.placement import Catalog, Offer, Requirements, parse_requirements, rank
from gpufsm.providers import PROVIDERS
from gpufsm.specs import InstanceSpec, parse_spec, stored_spec
from gpufsm.store import BlockedOffer, InstanceRecord, PlacementRecord, PlacementState, RunLink

__all__ = ["PlacementPolicy", "cancel", "describe", "place", "spec_for"]

log = logging.getLogger("gpufsm.placement")

S = InstanceState
#: Fields placement fills from the offer it tries; a template must leave them out.
_CHOSEN = ("provider", "instance_type", "region")


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """How hard a placement tries: at most ``max_attempts`` offers, for at most
    ``max_seconds``; an offer refused for capacity or quota is skipped by every process
    for ``block_for`` seconds."""

    max_attempts: int = 8
    max_seconds: float = 900.0
    block_for: float = 600.0


def place(engine: Engine, catalog: Catalog, requirements: Requirements | Mapping[str, Any],
          template: Mapping[str, Any] | None = None, *, reason: str | None = None,
          policy: PlacementPolicy | None = None, run: RunLink | None = None
          ) -> InstanceRecord:
    """See ``Fleet.launch`` with requirements; ``run`` is written on every attempt."""
    requirements = parse_requirements(requirements)
    policy = policy or PlacementPolicy()
    base, stored = check_template(template or {})
    offers, skipped = _candidates(engine, catalog, requirements)
    tries, invalid = _launchable(engine, offers, base, requirements)
    if offers and not tries:  # the spec suits no provider on offer: say what each needs
        raise ValidationError("template", "no offer can be launched as given: "
                              + "; ".join(invalid))
    now = engine.clock.now()
    placement = engine.store.open_placement(PlacementRecord(
        id=str(uuid.uuid4()), requirements=requirements.model_dump(mode="json"),
        template=stored, state=PlacementState.OPEN, created_at=now,
        updated_at=now, name=base.get("name")))
    attempts: list[tuple[str, str]] = []
    for offer, spec in tries:
        stop = _limit_reached(engine, placement, attempts, policy)
        if stop is not None:
            skipped.append(stop)
            break
        current = engine.store.get_placement(placement.id)
        if current.winner_id is not None:  # a reconciler adopted an earlier attempt
            return engine.store.get(current.winner_id)
        if current.state is PlacementState.FAILED:  # cancelled meanwhile: try no more
            skipped.append(f"cancelled: {current.reason}")
            break
        got, why = _attempt(engine, placement.id, offer, spec=spec, reason=reason,
                            policy=policy, n=len(attempts) + 1, run=run)
        if got is not None:
            return got
        attempts.append((describe(offer), why))
    if not offers:
        skipped.append("no offer matches the requirements now (see `gpufsm offers --all`)")
    closed = engine.store.fail_placement(placement.id, reason=f"{len(attempts)} attempt(s) "
                                         "failed", at=engine.clock.now())
    if closed.winner_id is not None:  # a reconciler adopted an attempt's machine meanwhile
        return engine.store.get(closed.winner_id)
    raise PlacementFailed(placement.id, tuple(attempts), (*invalid, *skipped))


def _launchable(engine: Engine, offers: list[Offer], template: Mapping[str, Any],
                requirements: Requirements) -> tuple[list[tuple[Offer, InstanceSpec]],
                                                     list[str]]:
    """Each offer's spec, checked by its adapter before anything is written or sent
    (Lambda wants one SSH key, the container clouds an image …); the offers whose spec
    a provider refuses are left out, one line per provider and reason."""
    tries: list[tuple[Offer, InstanceSpec]] = []
    refused: dict[tuple[str, str], int] = {}
    for offer in offers:
        try:
            spec = spec_for(template, offer, requirements)
            engine._adapter(offer.provider).validate(spec)
        except ValidationError as exc:
            key = (offer.provider, str(exc))
            refused[key] = refused.get(key, 0) + 1
            continue
        tries.append((offer, spec))
    return tries, [f"{provider}: {why} ({n} offer(s) skipped)"
                   for (provider, why), n in refused.items()]


def check_template(template: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec template, checked now (before anything is written) as a spec would be,
    and as the placement row keeps it (env values never stored, only their names). The
    fields placement chooses must be left out."""
    data = dict(template.model_dump() if isinstance(template, InstanceSpec) else template)
    for name in _CHOSEN:
        if data.get(name) is not None:
            raise ValidationError(f"template.{name}", "chosen by placement from the offers; "
                                  "leave it out (narrow the choice with the requirements)",
                                  value=data[name])
        data.pop(name, None)
    spec = parse_spec({**data, "provider": "placement", "instance_type": "any"})
    stored = {k: v for k, v in stored_spec(spec).items()
              if k not in ("provider", "instance_type")}
    return data, stored


def spec_for(template: Mapping[str, Any], offer: Offer, requirements: Requirements
             ) -> InstanceSpec:
    """The launch spec of one offer: the template, plus what the offer chose; SSH key
    names left out where the provider installs the account's keys and takes none."""
    data = dict(template)
    data.update(provider=offer.provider, instance_type=offer.instance_type,
                region=offer.region, gpu_count=offer.count)
    if requirements.max_price_per_hour is not None and data.get("max_price_per_hour") is None:
        data["max_price_per_hour"] = requirements.max_price_per_hour
    known = PROVIDERS.get(offer.provider)
    if known is not None and not known.takes_ssh_key_names:
        data.pop("ssh_key_names", None)  # it installs the account's keys itself
    if offer.interruptible:
        data["options"] = {**dict(known.spot_options if known else ()),
                           **dict(data.get("options") or {})}
    return parse_spec(data)


def describe(offer: Offer) -> str:
    """One offer in a line: where, what, how much."""
    where = f"{offer.provider}/{offer.instance_type}" + (f"@{offer.region}" if offer.region
                                                          else "")
    spot = " spot" if offer.interruptible else ""
    return f"{where} ({offer.count}x {offer.gpu}, ${offer.price_per_hour:.2f}/h{spot})"


def _candidates(engine: Engine, catalog: Catalog, requirements: Requirements
                ) -> tuple[list[Offer], list[str]]:
    """Matching offers cheapest first, without those blocked lately; why others were not
    considered (a provider's catalog unreadable, offers blocked)."""
    listing = catalog.offers(requirements.providers or None)
    skipped = [f"{name}: catalog unreadable ({why})"
               for name, why in sorted(listing.failures.items())]
    blocked = {(b.provider, b.instance_type, b.region, b.interruptible): b
               for b in engine.store.blocked_offers(now=engine.clock.now())}
    offers = []
    for offer in rank(listing.offers, requirements):
        hit = (blocked.get((offer.provider, offer.instance_type, offer.region or "",
                            offer.interruptible))
               or blocked.get((offer.provider, offer.instance_type, "", offer.interruptible)))
        if hit is None:
            offers.append(offer)
        else:
            skipped.append(f"{describe(offer)}: skipped, refused lately ({hit.reason})")
    return offers, skipped


def _limit_reached(engine: Engine, placement: PlacementRecord, attempts: list[Any],
                   policy: PlacementPolicy) -> str | None:
    if len(attempts) >= policy.max_attempts:
        return f"stopped after {policy.max_attempts} attempts (max_attempts)"
    spent = (engine.clock.now() - placement.created_at).total_seconds()
    if spent >= policy.max_seconds:
        return f"stopped after {spent:.0f}s (max_seconds {policy.max_seconds:.0f})"
    return None


def _attempt(engine: Engine, placement_id: str, offer: Offer, *, spec: InstanceSpec,
             reason: str | None, policy: PlacementPolicy, n: int, run: RunLink | None
             ) -> tuple[InstanceRecord | None, str]:
    """One offer tried: the row kept (ours, or the winner's), or None and why not."""
    why = f"placement {placement_id}, attempt {n}: {describe(offer)}"
    try:
        record = launch(engine, spec, f"{reason}; {why}" if reason else why,
                        placement_id=placement_id, run=run)
    except (InsufficientCapacity, QuotaExceeded) as exc:
        _block(engine, offer, exc, policy)
        return None, f"refused: {exc}"
    except TemporaryProviderError as exc:
        return None, (f"outcome unknown ({exc}); tracked: a machine that turns up for "
                      "it is terminated")
    except (ProviderError, ValidationError) as exc:
        return None, f"refused: {exc}"
    placement = engine.store.claim_winner(placement_id, record.id, at=engine.clock.now())
    if placement.winner_id == record.id:
        log.info("placement %s: %s on attempt %d", placement_id, describe(offer), n)
        return record, "placed"
    _surplus(engine, record, placement.winner_id)
    return (None if placement.winner_id is None else engine.store.get(placement.winner_id),
            "surplus")


def _block(engine: Engine, offer: Offer, exc: ProviderError, policy: PlacementPolicy) -> None:
    until = engine.clock.now() + timedelta(seconds=policy.block_for)
    try:
        engine.store.block_offer(BlockedOffer(offer.provider, offer.instance_type,
                                              offer.region or "", offer.interruptible,
                                              until, str(exc)[:500]))
    except GpufsmError:  # a placement goes on without the hint; the next one asks again
        log.warning("could not record the refusal of %s", describe(offer), exc_info=True)


def _surplus(engine: Engine, record: InstanceRecord, winner: str | None) -> None:
    """A machine its placement may not keep: terminated now (the sweep retries)."""
    why = (f"surplus: placement {record.placement_id} already kept {winner}" if winner
           else f"surplus: placement {record.placement_id} gave up before it turned up")
    try:
        terminate(engine, record.id, why)
    except GpufsmError:
        log.warning("terminating surplus %s failed; the reconciler retries", record.id,
                    exc_info=True)


def cancel(engine: Engine, placement_id: str, reason: str) -> list[InstanceRecord]:
    """Give a placement up and terminate every machine of its attempts (the winner's
    too): a cancelled request keeps nothing. An OPEN placement is failed first, so an
    attempt whose machine turns up later is surplus, never a winner nobody wants.
    Returns the attempts' rows after; a terminate that fails is left to the reconciler
    (the row is TERMINATING) and logged."""
    engine.store.fail_placement(placement_id, reason=reason, at=engine.clock.now())
    return [_ended(engine, row, reason) for row in engine.store.attempts(placement_id)]


def _ended(engine: Engine, row: InstanceRecord, reason: str) -> InstanceRecord:
    if not row.billable or row.state is S.TERMINATED:
        return row
    try:
        return terminate(engine, row.id, reason)
    except GpufsmError:
        log.warning("terminate of %s (placement %s) failed; the reconciler retries",
                    row.id, row.placement_id, exc_info=True)
        return engine.store.get(row.id)
