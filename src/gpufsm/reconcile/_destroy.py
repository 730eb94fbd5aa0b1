"""destroy-all: stop every instance of ours on a provider from bills, now.

It works from the provider's own listing of our tagged instances, so it still works
when the database is lost or was never shared; rows are adopted as it goes so every
terminate is recorded and confirmed like any other. One failure never stops the rest.

Listing and destroying are two steps (``destroy_targets``, then ``destroy_all``) so a
person can be shown exactly what is about to go before being asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpufsm.adapters import ProviderInstance
from gpufsm.errors import GpufsmError
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.reconcile._listing import live_row

__all__ = ["DestroyResult", "DestroyTarget", "destroy_all", "destroy_targets"]

S = InstanceState


@dataclass(frozen=True)
class DestroyTarget:
    """One instance destroy-all will terminate: what the listing and our row say."""

    provider: str
    provider_instance_id: str
    #: Our live row; None when no live row tracks it (it is adopted first).
    row_id: str | None
    name: str | None = None
    price_per_hour: float | None = None
    #: The provider's listing of it; None for a live row the listing did not show.
    listed: ProviderInstance | None = None


@dataclass
class DestroyResult:
    provider: str
    total: int = 0
    destroyed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (provider id, error)

    def __str__(self) -> str:
        return f"Destroyed {self.destroyed}/{self.total}"


def destroy_targets(fleet: Fleet, provider: str) -> list[DestroyTarget]:
    """Every instance carrying our tag that ``provider`` lists, and every live row there.

    Raises when the listing fails: then nothing is known. A tagged instance whose row is
    TERMINATED is a target without a row: TERMINATED is absorbing, so a terminate
    through that row would do nothing while the instance bills.
    """
    adapter = fleet.adapters[provider]
    listing = adapter.list_instances()
    targets: dict[str, DestroyTarget] = {}
    for inst in listing:
        if inst.tag is None or inst.state in (S.TERMINATING, S.TERMINATED):
            continue  # not ours, or already on its way out
        row = fleet.store.find(provider, provider_instance_id=inst.provider_instance_id)
        if row is None:
            row = fleet.store.find(provider, tag=inst.tag)
            pid = inst.provider_instance_id
            if row is not None and row.provider_instance_id not in (None, pid):
                row = None  # a live row tracks another instance of that tag: a duplicate
        if row is not None and not live_row(row):
            row = None
        targets[inst.provider_instance_id] = DestroyTarget(
            provider, inst.provider_instance_id, row.id if row else None,
            name=row.name if row and row.name else inst.name,
            price_per_hour=(row.price_per_hour if row and row.price_per_hour is not None
                            else inst.price_per_hour),
            listed=inst)
    for row in fleet.store.list(provider=provider):
        if row.state not in (S.TERMINATING, S.TERMINATED) and row.provider_instance_id \
                and row.provider_instance_id not in targets:
            # the listing may lag: be thorough
            targets[row.provider_instance_id] = DestroyTarget(
                provider, row.provider_instance_id, row.id, name=row.name,
                price_per_hour=row.price_per_hour)
    return list(targets.values())


def destroy_all(fleet: Fleet, provider: str, *, reason: str = "destroy-all",
                on_each: Callable[[str, str | None], None] | None = None,
                targets: Sequence[DestroyTarget] | None = None) -> DestroyResult:
    """Terminate every instance carrying our tag on ``provider`` (and every live row).

    ``targets``: from ``destroy_targets`` (listed now when not given; then this raises
    if the listing fails, having done nothing). ``on_each(provider_instance_id,
    error_or_None)`` reports progress; an adopted instance's row is then in the store.
    """
    if targets is None:
        targets = destroy_targets(fleet, provider)
    result = DestroyResult(provider)
    for target in targets:
        pid = target.provider_instance_id
        result.total += 1
        try:
            if target.row_id is None:
                assert target.listed is not None  # a target without a row was listed
                # adopted straight into TERMINATING, one commit, then the call
                fleet.adopt(provider, target.listed, reason=f"{reason}: adopted",
                            terminate=True)
            else:
                fleet.terminate(target.row_id, reason=reason)
            result.destroyed += 1
            error = None
        except GpufsmError as exc:
            error = f"{type(exc).__name__}: {exc}"
            result.failures.append((pid, error))
        if on_each is not None:
            on_each(pid, error)
    return result
