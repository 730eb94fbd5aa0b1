"""destroy-all: stop every instance of ours on a provider from bills, now.

It works from the provider's own listing of our tagged instances, so it still works
when the database is lost or was never shared; rows are adopted as it goes so every
terminate is recorded and confirmed like any other. One failure never stops the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gpufsm.errors import GpufsmError
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState

__all__ = ["DestroyResult", "destroy_all"]

S = InstanceState


@dataclass
class DestroyResult:
    provider: str
    total: int = 0
    destroyed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (provider id, error)

    def __str__(self) -> str:
        return f"Destroyed {self.destroyed}/{self.total}"


def destroy_all(fleet: Fleet, provider: str, *, reason: str = "destroy-all",
                on_each: Callable[[str, str | None], None] | None = None) -> DestroyResult:
    """Terminate every instance carrying our tag on ``provider`` (and every live row).

    ``on_each(provider_instance_id, error_or_None)`` reports progress. Raises only when
    the listing itself fails: then nothing is known and nothing was done.
    """
    adapter = fleet.adapters[provider]
    listing = adapter.list_instances()
    result = DestroyResult(provider)
    targets: dict[str, str | None] = {}  # provider id → row id (None: adopt first)
    for inst in listing:
        if inst.tag is None or inst.state in (S.TERMINATING, S.TERMINATED):
            continue  # not ours, or already on its way out
        row = (fleet.store.find(provider, provider_instance_id=inst.provider_instance_id)
               or fleet.store.find(provider, tag=inst.tag))
        targets[inst.provider_instance_id] = row.id if row else None
    for row in fleet.store.list(provider=provider):
        if row.state not in (S.TERMINATING, S.TERMINATED) and row.provider_instance_id \
                and row.provider_instance_id not in targets:
            targets[row.provider_instance_id] = row.id  # the listing may lag: be thorough
    by_pid = {i.provider_instance_id: i for i in listing}
    for pid, known in targets.items():
        result.total += 1
        try:
            row_id = known or fleet.adopt(provider, by_pid[pid], reason=f"{reason}: adopted").id
            fleet.terminate(row_id, reason=reason)
            result.destroyed += 1
            error = None
        except GpufsmError as exc:
            error = f"{type(exc).__name__}: {exc}"
            result.failures.append((pid, error))
        if on_each is not None:
            on_each(pid, error)
    return result
