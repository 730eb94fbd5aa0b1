"""The active half of a pass: sync each row, then act on its deadline or its billing.

A pass first sees (``_pass``: one listing per provider, an observation per row that
needs one); what it then does with each row is here: the observations committed
together, then a step per row — a launch written off, a transition timed out, a FAILED
row that may bill terminated, a TERMINATING one re-terminated with capped backoff
(attempts read from the history, so a restarted daemon keeps the same backoff) — and
the terminates the steps asked for sent together at the end. Every change goes
through the engine; what changed is the report's, one row's failure never the pass's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial

from gpufsm.adapters import Observation
from gpufsm.errors import GpufsmError, InsufficientCredit, ProviderError, TransitionNotAllowed
from gpufsm.fleet import Fleet
from gpufsm.machines import Event, InstanceState
from gpufsm.reconcile._config import ReconcileConfig
from gpufsm.reconcile._listing import Row, View, changes
from gpufsm.reconcile._report import Change, PassReport, Problem
from gpufsm.store import InstanceRecord, TrackedInstance, TransitionRecord

__all__ = ["Steps"]

log = logging.getLogger("gpufsm.reconcile")

S = InstanceState


class Steps:
    """Sync and step the rows of a pass; the base of ``Reconciler``, which sees them.

    Its state is per pass (the TERMINATING rows' histories, read at once, and the
    terminates asked for), besides ``credit_exhausted``, which the policies read.
    """

    def __init__(self, fleet: Fleet, config: ReconcileConfig, actor: str) -> None:
        self.fleet = fleet
        self.config = config
        self.actor = actor  # also the lease owner: unique per daemon when leasing
        self.credit_exhausted: set[str] = set()
        self._histories: Mapping[str, Sequence[TransitionRecord]] = {}
        self._history_versions: dict[str, int] = {}
        #: Terminates the step phase asked for, sent together (None: act at once).
        self._ending: list[tuple[Row, str]] | None = None

    def _sync_and_step(self, provider: str, rows: Sequence[TrackedInstance],
                       seen: Sequence[tuple[TrackedInstance, Observation]], view: View,
                       report: PassReport) -> None:
        """Sync every row (decided together, moves committed together), then step each.

        A row the batch could not write (another thread holds it, it moved meanwhile)
        goes through ``observe``, in row order with the rest of its row's work.
        """
        batched = self.fleet._observe_outcomes(seen, self.actor)
        # Terminate attempts of every TERMINATING row, read at once (not one per row).
        self._histories = self.fleet.store.history_many(
            [r.id for r in rows if r.state is S.TERMINATING and r.provider_instance_id])
        self._history_versions = {r.id: r.version for r in rows}
        self._ending = []  # the steps' terminates: sent together after the loop
        for (row, observation), done in zip(seen, batched, strict=True):
            try:
                record: Row
                if done is None:
                    record = self._sync(row, observation, report)
                else:
                    record = done.after
                    report.changes.extend(changes(record, done.moves))
                for _ in range(3):  # a step may lead to another: timed out → terminate
                    after = self._step(record, view, report)
                    if after is None or after.state is record.state:
                        break
                    record = after
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)
        ending, self._ending = self._ending, None
        if ending:
            self._end_together(provider, ending, report)

    def _end_together(self, provider: str, ending: Sequence[tuple[Row, str]],
                      report: PassReport) -> None:
        """The pass's terminates: every intent committed in one transaction, then each
        sent and looked at (``Fleet._terminate_outcomes``); a row the batch left out goes
        through ``terminate`` one by one."""
        done = self.fleet._terminate_outcomes([(r.id, why) for r, why in ending])
        for row, why in ending:
            try:
                ended = done.get(row.id)
                if ended is None:
                    self._act(row, report, partial(self.fleet.terminate, row.id, reason=why))
                    continue
                if ended.after.version == row.version + len(ended.moves):
                    report.changes.extend(changes(ended.after, ended.moves))
                else:  # the look went through the single path: its moves are in history
                    self._recordchanges(row, ended.after, report)
                if ended.error is not None:
                    self._provider_refused(row, ended.error, report)
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)

    def _provider_refused(self, row: Row, exc: ProviderError, report: PassReport) -> None:
        """A failed provider call of an action: news in the report (the row stays where
        the committed intent put it, for the next pass), as ``_act`` reports one."""
        if isinstance(exc, InsufficientCredit):
            self.credit_exhausted.add(row.provider)
            raise exc
        report.problems.append(Problem("instance-error", row.provider,
                                       f"{type(exc).__name__}: {exc}", row.id))

    def _row_failed(self, provider: str, instance_id: str, exc: Exception,
                    report: PassReport) -> None:
        if isinstance(exc, GpufsmError):
            # In the report; the daemon logs a problem once, and again when it changes.
            log.debug("reconcile of %s failed: %s", instance_id, exc)
            report.problems.append(Problem("instance-error", provider, str(exc), instance_id))
            return
        log.error("reconcile of %s crashed", instance_id, exc_info=exc)
        report.problems.append(Problem(
            "instance-error", provider, f"{type(exc).__name__}: {exc}", instance_id))

    def _sync(self, row: Row, observation: Observation, report: PassReport
              ) -> InstanceRecord:
        after = self.fleet.observe(row.id, observation, actor=self.actor)
        self._recordchanges(row, after, report)
        return after

    def _step(self, record: Row, view: View, report: PassReport
              ) -> InstanceRecord | None:
        """The active half: act on deadlines and on what may still bill. Returns the
        record after an action, or None when there was nothing to do."""
        if record.state is S.RUNNING or record.state is S.STOPPED:
            return None  # no deadline, nothing billing unseen: most rows of a big pass
        now = self.fleet.clock.now()
        age = (now - record.state_entered_at).total_seconds()
        deadline = self.config.deadline(record.provider, record.state)
        if record.state is S.CREATING:
            if record.provider_instance_id is None and view.ok and deadline is not None \
                    and age > deadline and self._missing_long_enough(record, view):
                return self._act(record, report, partial(
                    self.fleet.fail_launch, record.id,
                    reason=f"no instance with tag {record.tag} {age:.0f}s after launch"))
        elif record.state in (S.CREATED, S.STARTING, S.STOPPING):
            if deadline is not None and age > deadline:
                return self._act(record, report, partial(
                    self.fleet.time_out, record.id,
                    reason=f"{record.state.value} for {age:.0f}s (deadline {deadline:.0f}s)"))
        elif record.state is S.FAILED:
            if record.billable and self.config.terminate_failed:
                return self._terminate(record, report, "FAILED and may still bill")
        elif record.state is S.TERMINATING:
            return self._reterminate(record, view, report)
        return None

    def _missing_long_enough(self, record: Row, view: View) -> bool:
        """No instance with this row's tag in N good listings in a row (counted on the
        row in sync, so passes of different processes add up)."""
        return (record.tag not in view.by_tag
                and record.missing_count >= self.config.absent_listings_to_confirm)

    def _reterminate(self, record: Row, view: View, report: PassReport
                     ) -> InstanceRecord | None:
        if record.provider_instance_id is None:
            # Nothing to call; gone once good listings no longer show our tag past the
            # launch deadline (the instance would have appeared by then).
            deadline = self.config.deadline(record.provider, S.CREATING) or 0
            age = (self.fleet.clock.now() - record.created_at).total_seconds()
            if view.ok and age > deadline and self._missing_long_enough(record, view):
                return self._act(record, report, partial(
                    self.fleet.observe, record.id, Observation.absent(
                        confirmed=True, reason="never appeared: no instance with our tag"),
                    actor=self.actor))
            return None
        # Attempts and their times come from the history, not from memory, so a
        # restarted daemon, or one that took over a dead daemon's lease, keeps the same
        # backoff instead of re-issuing at once (a double action).
        attempts, last = self._terminate_attempts(record)
        backoff = min(self.config.terminate_backoff_cap,
                      self.config.terminate_backoff * 2 ** (attempts - 1))
        if (self.fleet.clock.now() - last).total_seconds() < backoff:
            return None
        if attempts == self.config.terminate_alert_after:  # crossed once: one alert
            message = (f"still present after {attempts} terminate attempts; "
                       f"still trying every {backoff:.0f}s")
            log.error("ALERT %s (%s): %s", record.id, record.provider, message)
            report.problems.append(Problem("alert", record.provider, message, record.id))
        return self._terminate(record, report,
                               f"re-issue #{attempts}: provider still shows it")

    def _terminate_attempts(self, record: Row) -> tuple[int, datetime]:
        """Terminates issued since the row became TERMINATING, and when the last was."""
        attempts, last = 0, None
        if self._history_versions.get(record.id) == record.version:
            history = self._histories.get(record.id, ())  # read with the pass's rows
        elif record.id not in self._histories and record.entered_by is Event.TERMINATE:
            return 1, record.state_entered_at  # terminated by this pass: one attempt
        else:
            history = self.fleet.history(record.id)  # moved during this pass
        for h in reversed(history):
            if h.to_state is not S.TERMINATING:
                break
            if h.event is Event.TERMINATE:
                attempts += 1
                last = last or h.at  # walking backwards: the first one met is the latest
        # entered by observed_terminating (someone else): count that as the first try
        return max(attempts, 1), last or record.state_entered_at

    def _terminate(self, record: Row, report: PassReport, why: str
                   ) -> InstanceRecord | None:
        if self._ending is not None:  # in a pass's step phase: sent with the others
            self._ending.append((record, why))
            return None
        return self._act(record, report, partial(self.fleet.terminate, record.id, reason=why))

    def _act(self, record: Row, report: PassReport,
             action: Callable[[], InstanceRecord]) -> InstanceRecord | None:
        """Run one engine call; record what changed; a refusal is news, not a crash."""
        try:
            after = action()
        except InsufficientCredit:
            self.credit_exhausted.add(record.provider)
            raise
        except TransitionNotAllowed as exc:  # someone moved it meanwhile: next pass
            log.info("reconcile action on %s skipped: %s", record.id, exc)
            return None
        except ProviderError as exc:
            after = self.fleet.get(record.id)
            self._recordchanges(record, after, report)
            report.problems.append(Problem("instance-error", record.provider,
                                           f"{type(exc).__name__}: {exc}", record.id))
            return after
        self._recordchanges(record, after, report)
        return after

    def _recordchanges(self, before: Row, after: Row,
                        report: PassReport) -> None:
        if after.version == before.version:
            return
        for h in self.fleet.history(after.id):
            if h.version > before.version:
                report.changes.append(Change(
                    after.id, after.provider, h.from_state.value if h.from_state else "",
                    h.to_state.value, h.event.value,
                    h.reason or (f"provider reports {h.raw_status!r}" if h.raw_status else "")))
