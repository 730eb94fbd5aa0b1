"""Policies: pure functions from a snapshot to actions, so they test without a network.

A policy never calls a provider or writes a row; it says what should happen and why,
and the reconciler carries that out through the same engine a user would use (guards,
history, intent first). Register your own with ``Reconciler(policies=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gpufsm.ledger import Ledger
from gpufsm.machines import InstanceState
from gpufsm.store import InstanceRecord, PricePoint, TransitionRecord

__all__ = [
    "Action",
    "Policy",
    "Snapshot",
    "hourly_budget",
    "idle_timeout",
    "insufficient_credit_emergency",
    "max_lifetime",
]

S = InstanceState
_BILLING = (S.CREATING, S.CREATED, S.STARTING, S.RUNNING, S.STOPPING, S.FAILED)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a policy may look at: the instances, the clock, and provider alarms.

    ``instances`` are the rows the policy may act on (with leases, this daemon's own).
    ``spent``, ``histories`` and ``prices`` are what spend is counted from: every row that
    may have billed inside the spend policies' windows, every daemon's, with their
    histories and price points.
    The reconciler reads them only when a policy asks (a ``SpendPolicy``), because
    histories of a whole fleet are not free; otherwise they are empty.
    """

    now: datetime
    instances: tuple[InstanceRecord, ...]
    credit_exhausted: frozenset[str] = frozenset()
    spent: tuple[InstanceRecord, ...] = ()
    histories: Mapping[str, Sequence[TransitionRecord]] = field(default_factory=dict)
    prices: Mapping[str, Sequence[PricePoint]] = field(default_factory=dict)

    def billing(self) -> list[InstanceRecord]:
        """Instances that may be costing GPU money right now."""
        return [r for r in self.instances if r.state in _BILLING and r.billable]

    def ledger(self, since: datetime | None,
               rows: Iterable[InstanceRecord] | None = None) -> Ledger:
        """What ``rows`` cost from ``since`` (None: all time) to now. By default ``spent``,
        and any of ``instances`` not among them (a snapshot built by hand may give only
        those): rows with nothing inside the window add nothing."""
        if rows is None:
            counted = {r.id: r for r in self.instances}
            counted.update((r.id, r) for r in self.spent)
            rows = counted.values()
        return Ledger.of(rows, self.histories, now=self.now, since=since,
                         prices=self.prices)


@dataclass(frozen=True, slots=True)
class Action:
    """``kind`` is terminate, stop or alert; ``policy`` names who asked, for the history.

    ``instance_id`` None: an alert about no one instance (a fleet over its budget).
    """

    kind: str
    instance_id: str | None
    policy: str
    reason: str


Policy = Callable[[Snapshot], Iterable[Action]]


def max_lifetime(seconds: float) -> Policy:
    """Terminate anything older than ``seconds``: the backstop for forgotten jobs."""

    def policy(snap: Snapshot) -> list[Action]:
        return [
            Action("terminate", r.id, "max_lifetime",
                   f"alive {(snap.now - r.created_at).total_seconds():.0f}s > {seconds:.0f}s")
            for r in snap.instances
            if r.state not in (S.TERMINATING, S.TERMINATED)
            and r.billable and (snap.now - r.created_at).total_seconds() > seconds
        ]

    return policy


def idle_timeout(seconds: float,
                 last_activity: Callable[[InstanceRecord], datetime | None] | None = None,
                 *, action: str = "terminate") -> Policy:
    """Terminate (or stop) RUNNING instances idle for longer than ``seconds``.

    gpufsm cannot see inside a machine, so "activity" is whatever ``last_activity``
    says (your job queue's last heartbeat); by default, when the instance last changed
    state — i.e. nobody has touched it since it came up.
    """
    if action not in ("terminate", "stop"):
        raise ValueError("idle_timeout action is terminate or stop")

    def policy(snap: Snapshot) -> list[Action]:
        actions = []
        for r in snap.instances:
            if r.state is not S.RUNNING:
                continue
            seen = (last_activity(r) if last_activity else None) or r.state_entered_at
            idle = (snap.now - seen).total_seconds()
            if idle > seconds:
                actions.append(Action(action, r.id, "idle_timeout",
                                      f"idle {idle:.0f}s > {seconds:.0f}s"))
        return actions

    return policy


def hourly_budget(max_dollars_per_hour: float) -> Policy:
    """Keep the fleet's burn rate under a cap by terminating the newest first.

    Newest first because the oldest have the most sunk work; instances without a known
    price count as free here (and are flagged by an alert so the gap is visible).
    """

    def policy(snap: Snapshot) -> list[Action]:
        billing = snap.billing()
        unpriced = [r for r in billing if r.price_per_hour is None]
        actions = [Action("alert", r.id, "hourly_budget", "price unknown: not counted")
                   for r in unpriced]
        rate = sum(r.price_per_hour or 0.0 for r in billing)
        for r in sorted(billing, key=lambda r: r.created_at, reverse=True):
            if rate <= max_dollars_per_hour:
                break
            if r.price_per_hour:
                actions.append(Action("terminate", r.id, "hourly_budget",
                                      f"fleet burns ${rate:.2f}/h > ${max_dollars_per_hour:.2f}/h"))
                rate -= r.price_per_hour
        return actions

    return policy


def insufficient_credit_emergency() -> Policy:
    """A provider said our account cannot pay: destroy every instance of ours there.

    Stopped instances too (their disks still bill), and FAILED ones that may bill. The
    reconciler carries on past individual failures and reports "destroyed k/n".
    """

    def policy(snap: Snapshot) -> list[Action]:
        return [
            Action("terminate", r.id, "insufficient_credit",
                   f"{r.provider} reports insufficient credit: destroying everything there")
            for r in snap.instances
            if r.provider in snap.credit_exhausted
            and r.state not in (S.TERMINATING, S.TERMINATED)
            and (r.billable or r.provider_instance_id is not None)
        ]

    return policy
