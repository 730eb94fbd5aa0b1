"""How patient the reconciler is: deadlines per state and provider, and what it may do."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from gpufsm.machines import InstanceState

__all__ = ["DEFAULT_DEADLINES", "OrphanPolicy", "ReconcileConfig"]

S = InstanceState

#: Seconds an instance may sit in a state before the reconciler acts. CREATING is the
#: launch deadline (then a row whose instance never appeared is failed); the others time
#: out to FAILED, which keeps them billable so the clean-up policy terminates them.
DEFAULT_DEADLINES: Mapping[InstanceState, float] = {
    S.CREATING: 15 * 60,
    S.CREATED: 30 * 60,
    S.STARTING: 45 * 60,  # large images on a marketplace host can take this long
    S.STOPPING: 20 * 60,
}


class OrphanPolicy(enum.StrEnum):
    """What to do with an instance that carries our tag but has no row.

    REPORT is the default because a tag proves only that *some* gpufsm launched it:
    a second deployment (staging) on the same account would otherwise kill production.
    """

    REPORT = "report"
    ADOPT = "adopt"
    TERMINATE = "terminate"


class ReconcileConfig(BaseModel):
    """Everything a pass needs to decide; defaults are what a cautious operator picks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deadlines: dict[InstanceState, float] = Field(
        default_factory=lambda: dict(DEFAULT_DEADLINES))
    provider_deadlines: dict[str, dict[InstanceState, float]] = Field(default_factory=dict)
    absent_listings_to_confirm: int = Field(default=3, ge=1, description=(
        "consecutive good listings without a row's tag before a row with no provider id "
        "(a launch that never showed) may be written off past its deadline; a row with "
        "a provider id is never ended by listings alone"))
    confirm_gets_per_pass: int = Field(default=20, ge=0, description=(
        "direct GETs per provider and pass to confirm absences (least recently checked "
        "first); only a GET answering the provider's own not-found ends a row with a "
        "provider id, so 0 leaves missing rows waiting (reported, never ended)"))
    suspicious_absent_fraction: float = Field(default=0.5, gt=0, le=1, description=(
        "a listing missing more than this share of our live instances is UNKNOWN"))
    suspicious_min_instances: int = Field(default=3, ge=1, description=(
        "below this many live instances a listing is never called suspicious"))
    terminate_failed: bool = Field(default=True, description=(
        "terminate FAILED instances that may bill (the usual cure for a dead machine)"))
    terminate_backoff: float = Field(default=30.0, gt=0)
    terminate_backoff_cap: float = Field(default=600.0, gt=0)
    terminate_alert_after: int = Field(default=8, ge=1, description=(
        "re-issued terminates before an alert is raised (and we keep trying)"))
    orphans: OrphanPolicy = OrphanPolicy.REPORT
    lease_ttl: float | None = Field(default=None, gt=0, description=(
        "lease rows for this many seconds before acting (several daemons on one "
        "database); None acts on every row (one daemon)"))
    lease_batch: int | None = Field(default=None, ge=1, description=(
        "at most this many rows leased per pass, so daemons share the work"))

    def deadline(self, provider: str, state: InstanceState) -> float | None:
        return self.provider_deadlines.get(provider, {}).get(state, self.deadlines.get(state))
