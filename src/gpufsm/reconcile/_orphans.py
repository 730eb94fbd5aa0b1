"""Instances with our tag that no live row holds: report, adopt, or adopt and terminate.

A tag proves only that *some* gpufsm launched an instance, so an orphan is reported by
default (``OrphanPolicy``); an instance that is certainly ours and certainly unwanted
(its row was concluded gone, or it duplicates a live row's launch) is always adopted
into a new row and terminated, with an alert. Every change goes through the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpufsm.adapters import ProviderInstance
from gpufsm.errors import GpufsmError, ProviderError
from gpufsm.fleet import Fleet
from gpufsm.reconcile._config import OrphanPolicy, ReconcileConfig
from gpufsm.reconcile._listing import Ownership, Row
from gpufsm.reconcile._report import Change, PassReport, Problem

__all__ = ["Strays"]


class Strays:
    """What one pass does about the stray instances of a provider's listing."""

    def __init__(self, fleet: Fleet, config: ReconcileConfig) -> None:
        self.fleet = fleet
        self.config = config

    def sweep(self, provider: str, listing: Sequence[ProviderInstance],
              report: PassReport, rows: Sequence[Row] = ()) -> None:
        """Every listed instance carrying our tag that no live row holds.

        * no row has ever carried its tag or id: an *orphan* (a crash between launch and
          commit, or another deployment's): report, adopt or terminate per policy;
        * only finished rows carry it (TERMINATED, or a launch written off): we concluded
          it gone, or never created, and it bills. *Resurrected*: adopted into a new row
          linked to the old one and terminated, whatever the orphan policy, with an alert
          — the old row stays TERMINATED (absorbing) and its history stays true;
        * a live row carries its tag but tracks another instance: a *duplicate* of one
          launch (one request, one machine): adopted and terminated, with an alert.
        """
        for inst, verdict, old in Ownership(self.fleet.store, provider, listing, rows).strays():
            if old is None:
                self._orphan(provider, inst, report)
            else:
                self._reclaim(provider, inst, verdict, old, report)

    def _orphan(self, provider: str, inst: ProviderInstance, report: PassReport) -> None:
        policy = self.config.orphans
        report.problems.append(Problem(
            "orphan", provider, f"{inst.provider_instance_id} carries our tag {inst.tag} "
            f"but has no row ({inst.raw_status}); policy: {policy.value}"))
        if policy is OrphanPolicy.REPORT:
            return
        # Terminate: adopted straight into TERMINATING, in the adoption's transaction.
        self._adopt(provider, inst, f"orphan {inst.provider_instance_id}", report,
                    reason="orphan adopted by reconciler",
                    terminate=policy is OrphanPolicy.TERMINATE)

    def _reclaim(self, provider: str, inst: ProviderInstance, verdict: str, old: Row,
                 report: PassReport) -> None:
        """Adopt-and-terminate an instance that is certainly ours and certainly unwanted."""
        what = ("carries the tag of finished row" if verdict == "resurrected"
                else "duplicates the instance of live row")
        report.problems.append(Problem(
            "alert", provider, f"{inst.provider_instance_id} ({inst.raw_status}) {what} "
            f"{old.id[:8]} ({old.state.value}): adopting it into a new row and "
            "terminating it", old.id))
        self._adopt(provider, inst, f"{verdict} {inst.provider_instance_id}", report,
                    reason=f"{verdict}: instance of row {old.id}", terminate=True,
                    origin={verdict: old.id})

    def _adopt(self, provider: str, inst: ProviderInstance, why: str, report: PassReport,
               **adopt: Any) -> None:
        """``fleet.adopt`` and its report: the new row, and a failed terminate call (the row
        is TERMINATING then; later passes re-issue it)."""
        try:
            record = self.fleet.adopt(provider, inst, **adopt)
        except ProviderError as exc:
            if exc.instance_id is None:
                report.problems.append(Problem("instance-error", provider, str(exc)))
                return
            record = self.fleet.get(exc.instance_id)
            report.problems.append(Problem(
                "instance-error", provider, f"terminate of adopted {inst.provider_instance_id}"
                f" failed (will retry): {exc}", record.id))
        except GpufsmError as exc:
            report.problems.append(Problem("instance-error", provider, str(exc)))
            return
        report.changes.append(Change(record.id, record.provider, "", record.state.value,
                                     "adopted", why))
