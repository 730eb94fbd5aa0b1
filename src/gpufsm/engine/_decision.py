"""What ``decide`` answers: one observation's outcome as plain data, nothing done yet.

A Decision is what the engine *would* write for one row, so that one function decides
and another commits: the single path (``Fleet.observe``) and a pass of 100k rows commit
the same decisions, and a test reads a decision without a database.

The outcomes, in the order they are written: ``steps`` (none, one, or two — a CREATING
row found running is first ``observed_created``, then the observed edge), a ``drift``
(an observation with no edge, kept for audit), and ``facts`` (field changes without a
transition). ``needs`` says the decision could not be made with what was given: the
full record (a slim TrackedInstance lacks a field the rule compares), or health probe
results (the gate holds a RUNNING report until its probes pass); the caller gets them
and decides again.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gpufsm.health import HealthSpec, ProbeResult
from gpufsm.machines import Event

__all__ = ["Decision", "Drift", "Health", "Need", "Step"]


class Need(enum.StrEnum):
    """What a decision lacked; the caller fetches it and decides again."""

    RECORD = "record"  # the full InstanceRecord (the slim row lacks a compared field)
    PROBES = "probes"  # the health gate's spec (from the full record) and probe results


@dataclass(frozen=True, slots=True)
class Step:
    """One transition to fire through the machine (an observation's edge)."""

    event: Event
    reason: str | None = None
    raw_status: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Drift:
    """An observation with no edge from the row's state: recorded, never applied."""

    event: Event
    raw_status: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Health:
    """What the health gate reads: the row's spec, when RUNNING was first reported, and
    one round of probe results (None: not probed yet, so ``decide`` asks for them)."""

    spec: HealthSpec | None
    running_since: datetime | None = None
    results: tuple[ProbeResult, ...] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One row's outcome. ``facts`` None means no field write; ``notes`` are the log
    lines (level, message) the committer emits once the decision is written."""

    steps: tuple[Step, ...] = ()
    drift: Drift | None = None
    facts: Mapping[str, Any] | None = None
    needs: Need | None = None
    notes: tuple[tuple[int, str], ...] = ()

    @property
    def kind(self) -> str:
        """nothing | facts | drift | move | moves | record | probes (for tests and logs)."""
        if self.needs is not None:
            return self.needs.value
        if self.steps:
            return "move" if len(self.steps) == 1 else "moves"
        if self.drift is not None:
            return "drift"
        return "facts" if self.facts is not None else "nothing"

    @property
    def writes(self) -> bool:
        return bool(self.steps) or self.drift is not None or self.facts is not None


NOTHING = Decision()


def note(level: int, message: str) -> tuple[int, str]:
    """A log line a decision carries (decide itself logs nothing)."""
    return (level, message)


DEBUG, INFO, WARNING = logging.DEBUG, logging.INFO, logging.WARNING
