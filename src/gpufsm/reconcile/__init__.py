"""Reconciliation: keep the store true to the providers, and nothing billing that should not.

Sits on top of the engine (``Fleet``): every change it makes goes through the same
commands and observations a user's would, with the same guards and history.
"""

from gpufsm.reconcile._budget import SpendBudget, SpendPolicy, spend_budget
from gpufsm.reconcile._config import DEFAULT_DEADLINES, OrphanPolicy, ReconcileConfig
from gpufsm.reconcile._daemon import run_forever
from gpufsm.reconcile._destroy import DestroyResult, DestroyTarget, destroy_all, destroy_targets
from gpufsm.reconcile._listing import live_row
from gpufsm.reconcile._pass import Reconciler
from gpufsm.reconcile._policy import (
    Action,
    Policy,
    Snapshot,
    hourly_budget,
    idle_timeout,
    insufficient_credit_emergency,
    max_lifetime,
)
from gpufsm.reconcile._report import Change, PassReport, Problem

__all__ = [
    "DEFAULT_DEADLINES",
    "Action",
    "Change",
    "DestroyResult",
    "DestroyTarget",
    "OrphanPolicy",
    "PassReport",
    "Policy",
    "Problem",
    "ReconcileConfig",
    "Reconciler",
    "Snapshot",
    "SpendBudget",
    "SpendPolicy",
    "destroy_all",
    "destroy_targets",
    "hourly_budget",
    "idle_timeout",
    "insufficient_credit_emergency",
    "live_row",
    "max_lifetime",
    "run_forever",
    "spend_budget",
]
