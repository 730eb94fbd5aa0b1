"""What a probe found, in a shape the engine can store in a JSON column and read back.

A failing probe is a result, not an exception: the gate's job is to *judge* an instance,
and a judgement needs every probe's outcome (which one failed, how, how slowly), not the
first error that happened to be raised. ``gate_verdict`` is the whole decision the engine
makes from a round of results and the time since the provider first said running.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast, get_args

from gpufsm.errors import ValidationError
from gpufsm.health._spec import HealthSpec

__all__ = [
    "ERROR_KINDS",
    "ErrorKind",
    "GateVerdict",
    "ProbeResult",
    "gate_passed",
    "gate_verdict",
]

#: Why a probe failed, coarse enough for policy and dashboards to switch on.
ErrorKind = Literal["timeout", "refused", "unreachable", "dns", "tls", "http_status",
                    "body_mismatch", "exit_status", "error"]
ERROR_KINDS: frozenset[str] = frozenset(get_args(ErrorKind))

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome after its retries: the last attempt's, plus how many it took.

    ``latency`` is that last attempt's duration in seconds, measured on the real timer
    (it describes the network, not the engine's clock). ``at`` is when the attempt ended,
    read from the injected clock so it lines up with the instance's history rows.
    """

    name: str
    ok: bool
    error_kind: ErrorKind | None
    detail: str
    latency: float
    at: datetime
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.ok != (self.error_kind is None):
            raise ValueError("a result is ok exactly when it has no error_kind")
        if self.error_kind is not None and self.error_kind not in ERROR_KINDS:
            raise ValueError(f"unknown error_kind {self.error_kind!r}")
        if self.at.tzinfo is None or self.at.utcoffset() != timedelta(0):
            raise ValueError("at must be an aware UTC datetime")

    def to_json(self) -> dict[str, Any]:
        """A dict of JSON types (``at`` as ISO 8601), for a JSON column or ``json.dumps``."""
        return {
            "name": self.name,
            "ok": self.ok,
            "error_kind": self.error_kind,
            "detail": self.detail,
            "latency": self.latency,
            "at": self.at.isoformat(),
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> ProbeResult:
        """Read back what ``to_json`` wrote (a dict, or its ``json.dumps`` text).

        Raises gpufsm's ValidationError naming the field when the stored value is not one
        we wrote, rather than a KeyError deep inside the engine.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ValidationError("probe_result", f"not JSON: {exc.msg}") from exc
        if not isinstance(data, Mapping):
            raise ValidationError("probe_result", "must be an object")
        try:
            at = datetime.fromisoformat(_field(data, "at", str))
        except ValueError as exc:
            raise ValidationError("at", "not an ISO 8601 time", value=data["at"]) from exc
        if at.tzinfo is None:
            raise ValidationError("at", "must carry its UTC offset", value=data["at"])
        at = at.astimezone(UTC)
        latency = data.get("latency")
        if isinstance(latency, bool) or not isinstance(latency, int | float):
            raise ValidationError("latency", "must be a number", value=latency)
        kind = data.get("error_kind")
        if kind is not None and kind not in ERROR_KINDS:
            raise ValidationError("error_kind", f"must be one of {sorted(ERROR_KINDS)}",
                                  value=kind)
        attempts = data.get("attempts", 1)
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValidationError("attempts", "must be an integer", value=attempts)
        name, ok, detail = (_field(data, "name", str), _field(data, "ok", bool),
                            _field(data, "detail", str))
        try:
            return cls(
                name=name,
                ok=ok,
                error_kind=cast("ErrorKind | None", kind),
                detail=detail,
                latency=float(latency),
                at=at,
                attempts=attempts,
            )
        except ValueError as exc:
            raise ValidationError("probe_result", str(exc)) from exc


def _field(data: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = data.get(key)
    if not isinstance(value, kind):
        raise ValidationError(key, f"must be {kind.__name__}", value=value)
    return value


def gate_passed(results: Iterable[ProbeResult]) -> bool:
    """Every probe passed. No probes (an empty spec) passes: running means RUNNING."""
    return all(r.ok for r in results)


class GateVerdict(enum.StrEnum):
    """What the engine does with an instance the provider reports running."""

    PASSED = "passed"    # observed_running may be applied: RUNNING
    PENDING = "pending"  # stay STARTING/CREATED and probe again next round
    FAILED = "failed"    # the deadline passed unhealthy: FAILED, billable, policy terminates


def gate_verdict(spec: HealthSpec, results: Iterable[ProbeResult], *,
                 running_since: datetime, now: datetime) -> GateVerdict:
    """Judge one round of results against the deadline counted from ``running_since``.

    Passing needs an ok result for *every* probe the spec names, so a round that was
    never run (no results) cannot open the gate by accident.

    ``running_since`` is when the provider *first* reported the instance running; the
    engine keeps it across rounds (and restarts) so a probe that keeps failing cannot
    hold an instance — which bills by the hour — in STARTING forever.
    """
    passed = {r.name for r in results if r.ok}
    if all(name in passed for name in spec.probe_names):  # an empty spec passes at once
        return GateVerdict.PASSED
    if (now - running_since).total_seconds() >= spec.deadline:
        return GateVerdict.FAILED
    return GateVerdict.PENDING
