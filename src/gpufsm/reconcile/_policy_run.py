"""Running the policies at the end of a pass: a snapshot in, actions out, carried out.

Policies are pure (``gpufsm.reconcile._policy``); this is the part that reads what
they need and does what they ask, through the engine a user would use. Spend is read
only when a policy asks for it (a budget), from every daemon's rows, since the account
pays for all of them; actions go only to the rows this daemon watches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial

from gpufsm.errors import GpufsmError
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.reconcile._budget import read_spend
from gpufsm.reconcile._policy import Action, Policy, Snapshot
from gpufsm.reconcile._report import PassReport, Problem
from gpufsm.store import InstanceRecord

__all__ = ["Act", "run_policies"]

S = InstanceState

#: The reconciler's way of making one engine call and reporting what changed.
Act = Callable[[InstanceRecord, PassReport, Callable[[], InstanceRecord]],
               InstanceRecord | None]


def run_policies(policies: Sequence[Policy], fleet: Fleet, watched: Sequence[InstanceRecord],
                 *, credit_exhausted: Iterable[str], act: Act, report: PassReport) -> None:
    """Every policy's actions on ``watched``, carried out; a tally per policy in the
    report's notes."""
    now = fleet.clock.now()
    # Spend is the account's (every daemon's rows), read only for a policy that asks.
    spend = read_spend(fleet.store, policies, watched, now)
    snapshot = Snapshot(
        now=now,
        instances=tuple(watched),
        credit_exhausted=frozenset(credit_exhausted),
        spent=spend.rows,
        histories=spend.histories,
        prices=spend.prices,
    )
    actions: list[Action] = []
    for policy in policies:
        actions.extend(policy(snapshot))
    tally: dict[str, list[int]] = {}  # policy → [asked, done]
    for action in actions:
        why = f"policy {action.policy}: {action.reason}"
        if action.instance_id is None:  # about no one instance (a fleet over budget)
            report.problems.append(Problem("alert", "*", why) if action.kind == "alert"
                                   else Problem("instance-error", "*", f"{why}: a "
                                                f"{action.kind} naming no instance"))
            continue
        record = fleet.get(action.instance_id)
        if action.kind == "alert":
            report.problems.append(Problem("alert", record.provider, why, record.id))
            continue
        if action.kind == "terminate" and record.state in (S.TERMINATED, S.TERMINATING):
            continue
        counts = tally.setdefault(action.policy, [0, 0])
        counts[0] += 1
        command = fleet.terminate if action.kind == "terminate" else fleet.stop
        problems = len(report.problems)
        try:
            act(record, report, partial(command, record.id, reason=why))
        except GpufsmError as exc:
            report.problems.append(Problem("instance-error", record.provider, str(exc),
                                           record.id))
        if len(report.problems) == problems:
            counts[1] += 1
    for name, (asked, done) in sorted(tally.items()):
        report.notes.append(f"policy {name}: acted on {done}/{asked}")
