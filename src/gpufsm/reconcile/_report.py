"""What one reconcile pass saw, changed and could not do: printed by the CLI, logged
by the daemon, asserted on by tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

__all__ = ["Change", "PassReport", "Problem"]


@dataclass(frozen=True, slots=True)
class Change:
    """One transition the pass caused (or an action it took), and why."""

    instance_id: str
    provider: str
    from_state: str
    to_state: str
    event: str
    why: str


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the pass could not do or will not decide alone."""

    #: listing-unknown, instance-error, orphan, alert, no-adapter, drift, and ``blind``:
    #: a provider we could not see (no key, 401, unreachable, failed listing) while rows
    #: there may bill. ``message`` then says how many billable rows are at stake.
    kind: str
    provider: str
    message: str
    instance_id: str | None = None


@dataclass
class PassReport:
    started_at: str = ""
    duration: float = 0.0
    instances_seen: int = 0
    listings: Counter[str] = field(default_factory=Counter)  # provider → instances listed
    api_calls: int = 0
    changes: list[Change] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "policy insufficient_credit: 3/3"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready. (dataclasses.asdict would rebuild the Counter from its pairs.)"""
        return {
            "started_at": self.started_at, "duration": self.duration,
            "instances_seen": self.instances_seen, "listings": dict(self.listings),
            "api_calls": self.api_calls, "changes": [asdict(c) for c in self.changes],
            "problems": [asdict(p) for p in self.problems], "notes": list(self.notes),
            "ok": self.ok,
        }

    def problems_of(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    @property
    def ok(self) -> bool:
        """No instance error, no alert, and no provider left unseen while rows there may
        bill (an unknown listing of a provider with nothing billing is expected weather)."""
        return not any(p.kind in ("instance-error", "alert", "blind") for p in self.problems)
