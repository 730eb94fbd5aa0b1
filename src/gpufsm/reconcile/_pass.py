"""One reconcile pass: list each provider once, sync observations, then step.

The failures this module exists to avoid (and that its tests replay):

* one odd row hanging the loop — every instance is handled in its own try block, and
  an observation without an edge is drift, never an exception;
* an empty or failed listing read as "everything is gone" — a failed, empty-when-it-
  should-not-be or mostly-missing listing is UNKNOWN for the whole provider, and a row
  with a provider id is concluded gone only on the provider's own word (a direct GET
  answering its not-found, outside the visibility window after the launch; or its
  terminal status), never on listings alone;
* a provider we cannot see passing for a quiet one — a failed listing (no key, 401,
  unreachable) while rows there may bill is a ``blind`` problem, and the pass is not ok;
* instances created but never recorded after a crash — CREATING rows are matched to
  listed instances by ownership tag, and tagged instances with no row are reported;
* a wrong "gone" leaking forever — a listed instance carrying our tag whose rows are all
  finished (TERMINATED, or a refused launch) is ours and billing: it is *resurrected*,
  adopted into a new row and terminated, with an alert;
* termination given up while the instance still bills — TERMINATING rows are
  re-terminated with capped backoff forever; after a budget an alert is raised.

Evidence that decides a state is on the row, not in this process: the count of good
listings without a row's tag (``missing_count``), the launch's acceptance time, terminate
attempts (history). A cron ``reconcile --once`` and a long-running daemon decide alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from gpufsm import engine
from gpufsm.adapters import HasSeam, Observation, ProviderAdapter, ProviderInstance
from gpufsm.errors import GpufsmError, InsufficientCredit, ProviderError, TransitionNotAllowed
from gpufsm.fleet import Fleet
from gpufsm.machines import Event, InstanceState
from gpufsm.notify import WebhookDispatcher
from gpufsm.reconcile._config import OrphanPolicy, ReconcileConfig
from gpufsm.reconcile._policy import Action, Policy, Snapshot
from gpufsm.reconcile._report import Change, PassReport, Problem
from gpufsm.store import (
    InstanceRecord,
    InstanceStore,
    Move,
    TrackedInstance,
    TransitionRecord,
    gc_paused,
)

__all__ = ["Reconciler"]

log = logging.getLogger("gpufsm.reconcile")

S = InstanceState
_WATCHED = [s for s in S if s is not S.TERMINATED]
#: A row as the pass holds it: the slim view from the listing, or a full record after
#: an engine call. Both carry every field the pass reads, under the same names.
_Row = InstanceRecord | TrackedInstance


@dataclass
class _View:
    """One provider's listing for this pass; ``instances`` None means UNKNOWN."""

    instances: Sequence[ProviderInstance] | None
    by_pid: dict[str, ProviderInstance] = field(default_factory=dict)
    by_tag: dict[str, ProviderInstance] = field(default_factory=dict)

    @classmethod
    def of(cls, listing: Sequence[ProviderInstance] | None) -> _View:
        return cls(listing, {i.provider_instance_id: i for i in listing or ()},
                   {i.tag: i for i in listing or () if i.tag})

    @property
    def ok(self) -> bool:
        return self.instances is not None


class Reconciler:
    """Keeps the store true to the providers and makes sure nothing bills that should not.

    Whatever decides a state is persisted (see the module docstring); in memory there is
    only the order in which confirming GETs are spent, which is safe to lose.
    """

    def __init__(self, fleet: Fleet, config: ReconcileConfig | None = None, *,
                 policies: Sequence[Policy] = (), actor: str = "reconciler",
                 dispatcher: WebhookDispatcher | None = None) -> None:
        self.fleet = fleet
        self.dispatcher = dispatcher
        self.config = config or ReconcileConfig()
        self.policies = tuple(policies)
        self.actor = actor  # also the lease owner: unique per daemon when leasing
        self._claimed: set[str] = set()
        self._last_get: dict[str, float] = {}  # row id → monotonic time of its last GET
        self._everyone: list[TrackedInstance] = []
        self._histories: Mapping[str, Sequence[TransitionRecord]] = {}
        #: Terminates the step phase asked for, sent together (None: act at once).
        self._ending: list[tuple[_Row, str]] | None = None
        self._history_versions: dict[str, int] = {}
        self.credit_exhausted: set[str] = set()

    # ---- the pass ----------------------------------------------------------------------

    def run_once(self) -> PassReport:
        started = time.perf_counter()
        calls_before = self._api_calls()
        report = PassReport(started_at=self.fleet.clock.now().isoformat())
        # The slim view: a pass needs state, version, ids and times, not specs; 100k
        # tracked rows load in a fraction of the time and memory of 100k records.
        rows: list[TrackedInstance] = [
            r for r in self.fleet.store.list_tracked(states=_WATCHED) if _needs_watching(r)]
        self._everyone = rows  # the suspicious-listing check weighs every live row
        if self.config.lease_ttl is not None:
            # by query, not by a list of ids: one statement whatever the fleet's size
            rows = list(self.fleet.store.claim(
                self.actor, now=self.fleet.clock.now(), ttl=self.config.lease_ttl,
                limit=self.config.lease_batch))
        self._claimed = {r.id for r in rows}
        report.instances_seen = len(rows)
        # A pass builds several structures with an entry per instance (the listing, its
        # indexes, the observations, the batch); at 100k instances each full collection
        # re-walks them all for ~0.2 s. None of them is cyclic: collect after the pass.
        with gc_paused():
            for provider, adapter in sorted(self.fleet.adapters.items()):
                mine = [r for r in rows if r.provider == provider]
                self._provider_pass(provider, adapter, mine, report)
        for provider in sorted({r.provider for r in rows} - set(self.fleet.adapters)):
            mine = [r for r in rows if r.provider == provider]
            billing = sum(1 for r in mine if r.billable)
            if billing:
                report.problems.append(Problem(
                    "blind", provider, f"no adapter configured (its API key unset?): "
                    f"{billing} billable row(s) there are not watched"))
            else:
                report.problems.append(Problem(
                    "no-adapter", provider, f"{len(mine)} instances on a provider with no "
                    "adapter configured: left untouched"))
        self._sweep_surplus(report)
        self._run_policies(report)
        if self.dispatcher is not None:
            sent = self.dispatcher.deliver_due()
            if sent.delivered or sent.failed or sent.given_up:
                report.notes.append(f"webhooks: delivered {sent.delivered}, failed "
                                    f"{sent.failed}, given up {sent.given_up}")
        report.duration = time.perf_counter() - started
        report.api_calls = self._api_calls() - calls_before
        return report

    def _sweep_surplus(self, report: PassReport) -> None:
        """Placements keep one machine each: a surplus attempt (it turned up after
        another won, or after its placement failed) is terminated, like any other
        terminate of the pass; a known machine of a placement with no winner claims it."""
        try:
            surplus = [(i, why) for i, why in engine.sweep_surplus(self.fleet)
                       if self.config.lease_ttl is None or i in self._claimed]
        except GpufsmError as exc:
            report.problems.append(Problem("surplus", "*", f"surplus sweep failed: {exc}"))
            return
        rows = self.fleet.store.get_many(i for i, _ in surplus)
        by_provider: dict[str, list[tuple[_Row, str]]] = {}
        for instance_id, why in surplus:
            row = rows.get(instance_id)
            if row is not None and row.provider in self.fleet.adapters:  # else: blind
                by_provider.setdefault(row.provider, []).append((row, why))
        for provider, ending in sorted(by_provider.items()):
            self._end_together(provider, ending, report)

    def _api_calls(self) -> int:
        """HTTP requests sent so far by adapters that expose their seam (retries count)."""
        return sum(a.seam.calls for a in self.fleet.adapters.values()
                   if isinstance(a, HasSeam))

    def _provider_pass(self, provider: str, adapter: ProviderAdapter,
                       rows: list[TrackedInstance], report: PassReport) -> None:
        everyone = [r for r in self._everyone if r.provider == provider]
        listing, failure = self._list(provider, adapter)
        if listing is not None:
            report.listings[provider] = len(listing)
        view = _View.of(listing)
        if listing is not None and self._suspicious(everyone, view):
            failure = (f"listing shows {len(listing)} instances but misses most of our "
                       f"{len(everyone)} live ones: treated as unknown, nothing changed")
            view = _View.of(None)
        if failure is not None:
            billing = sum(1 for r in everyone if r.billable)
            if billing:  # unseen while money may be going out: loud, and the pass not ok
                report.problems.append(Problem(
                    "blind", provider, f"{failure}; {billing} billable row(s) there are "
                    "not watched"))
            else:
                report.problems.append(Problem("listing-unknown", provider, failure))
        confirm = self._pick_confirmations(rows, view)
        seen: list[tuple[TrackedInstance, Observation]] = []
        for row in rows:
            try:
                observation = self._observation(row, adapter, view, row.id in confirm)
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)
                continue
            seen.append((row, observation))
        self._sync_and_step(provider, rows, seen, view, report)
        if view.instances is not None:
            self._orphans(provider, view.instances, report, rows)

    def _sync_and_step(self, provider: str, rows: Sequence[TrackedInstance],
                       seen: Sequence[tuple[TrackedInstance, Observation]], view: _View,
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
                record: _Row
                if done is None:
                    record = self._sync(row, observation, report)
                else:
                    record = done.after
                    report.changes.extend(_changes(record, done.moves))
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

    def _end_together(self, provider: str, ending: Sequence[tuple[_Row, str]],
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
                    report.changes.extend(_changes(ended.after, ended.moves))
                else:  # the look went through the single path: its moves are in history
                    self._record_changes(row, ended.after, report)
                if ended.error is not None:
                    self._provider_refused(row, ended.error, report)
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)

    def _provider_refused(self, row: _Row, exc: ProviderError, report: PassReport) -> None:
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

    def _list(self, provider: str, adapter: ProviderAdapter
              ) -> tuple[Sequence[ProviderInstance] | None, str | None]:
        """The complete listing, or None and why it could not be had."""
        try:
            listing = adapter.list_instances()
        except InsufficientCredit as exc:
            self.credit_exhausted.add(provider)
            return None, f"listing failed: {exc}"
        except ProviderError as exc:
            return None, f"listing failed: {exc}"
        return listing, None

    def _suspicious(self, rows: Sequence[_Row], view: _View) -> bool:
        """Most of what we know is running is missing: an outage, not a mass extinction."""
        known = [r for r in rows if r.provider_instance_id is not None
                 and r.state is not S.TERMINATING]
        if len(known) < self.config.suspicious_min_instances:
            return False
        missing = sum(1 for r in known
                      if r.provider_instance_id not in view.by_pid and r.tag not in view.by_tag)
        return missing / len(known) > self.config.suspicious_absent_fraction

    def _pick_confirmations(self, rows: Sequence[_Row], view: _View) -> set[str]:
        """Which rows missing from the listing get a direct GET this pass.

        The budget goes to the rows checked least recently, so rows beyond it are
        confirmed on later passes instead of being starved by the same first few.
        """
        if not view.ok or self.config.confirm_gets_per_pass == 0:
            return set()
        # A GET inside a row's visibility window could not conclude anything: skip it.
        missing = [r for r in rows if r.provider_instance_id is not None
                   and r.provider_instance_id not in view.by_pid
                   and self.fleet.absence_provable(r)]
        missing.sort(key=lambda r: self._last_get.get(r.id, float("-inf")))
        return {r.id for r in missing[:self.config.confirm_gets_per_pass]}

    def _observation(self, row: _Row, adapter: ProviderAdapter, view: _View,
                     may_get: bool) -> Observation:
        if not view.ok:
            return Observation.unknown("listing unknown")
        found = (view.by_pid.get(row.provider_instance_id) if row.provider_instance_id
                 else view.by_tag.get(row.tag))
        if found is not None:
            return Observation.present(found)
        if row.provider_instance_id is None:
            # Counted on the row: one with no id is written off only after N good
            # listings in a row without its tag, never on one (an outage's empty answer).
            return Observation.absent(confirmed=False, reason="no instance with our tag")
        # A row with an id ends only on the provider's own word: a direct GET answering
        # its not-found (listings can lie or lag), or a terminal status. Rows past this
        # pass's GET budget wait their turn; with GETs off they wait for good.
        if not may_get:
            why = ("GET on a later pass" if self.config.confirm_gets_per_pass
                   else "confirm_gets_per_pass is 0: only a direct GET confirms absence")
            return Observation.unknown(f"missing from the listing; {why}")
        self._last_get[row.id] = self.fleet.clock.monotonic()
        try:
            seen = adapter.get(row.provider_instance_id)
        except ProviderError as exc:
            return Observation.unknown(f"confirming GET failed: {exc}")
        if seen is None:
            return Observation.absent(confirmed=True,
                                      reason="absent from the listing; GET: not found")
        return Observation.present(seen)

    def _sync(self, row: _Row, observation: Observation, report: PassReport
              ) -> InstanceRecord:
        after = self.fleet.observe(row.id, observation, actor=self.actor)
        self._record_changes(row, after, report)
        return after

    def _step(self, record: _Row, view: _View, report: PassReport
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

    def _missing_long_enough(self, record: _Row, view: _View) -> bool:
        """No instance with this row's tag in N good listings in a row (counted on the
        row in sync, so passes of different processes add up)."""
        return (record.tag not in view.by_tag
                and record.missing_count >= self.config.absent_listings_to_confirm)

    def _reterminate(self, record: _Row, view: _View, report: PassReport
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

    def _terminate_attempts(self, record: _Row) -> tuple[int, datetime]:
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

    def _terminate(self, record: _Row, report: PassReport, why: str
                   ) -> InstanceRecord | None:
        if self._ending is not None:  # in a pass's step phase: sent with the others
            self._ending.append((record, why))
            return None
        return self._act(record, report, partial(self.fleet.terminate, record.id, reason=why))

    def _act(self, record: _Row, report: PassReport,
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
            self._record_changes(record, after, report)
            report.problems.append(Problem("instance-error", record.provider,
                                           f"{type(exc).__name__}: {exc}", record.id))
            return after
        self._record_changes(record, after, report)
        return after

    def _record_changes(self, before: _Row, after: _Row,
                        report: PassReport) -> None:
        if after.version == before.version:
            return
        for h in self.fleet.history(after.id):
            if h.version > before.version:
                report.changes.append(Change(
                    after.id, after.provider, h.from_state.value if h.from_state else "",
                    h.to_state.value, h.event.value,
                    h.reason or (f"provider reports {h.raw_status!r}" if h.raw_status else "")))

    def release(self) -> int:
        """Hand this daemon's leases back (a clean shutdown), so others need not wait."""
        if self.config.lease_ttl is None:
            return 0
        return self.fleet.store.release(self.actor)

    # ---- orphans and policies ---------------------------------------------------------

    def _orphans(self, provider: str, listing: Iterable[ProviderInstance],
                 report: PassReport, rows: Sequence[_Row] = ()) -> None:
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
        for inst, verdict, old in _Ownership(self.fleet.store, provider, listing, rows).strays():
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

    def _reclaim(self, provider: str, inst: ProviderInstance, verdict: str, old: _Row,
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

    def _run_policies(self, report: PassReport) -> None:
        if not self.policies:
            return
        # With leases, policies see (and act on) only this daemon's rows: two daemons
        # must never both terminate the same instance.
        watched = [r for r in self.fleet.store.list(states=_WATCHED)
                   if self.config.lease_ttl is None or r.id in self._claimed]
        snapshot = Snapshot(
            now=self.fleet.clock.now(),
            instances=tuple(watched),
            credit_exhausted=frozenset(self.credit_exhausted | self.fleet.credit_exhausted),
        )
        actions: list[Action] = []
        for policy in self.policies:
            actions.extend(policy(snapshot))
        tally: dict[str, list[int]] = {}  # policy → [asked, done]
        for action in actions:
            record = self.fleet.get(action.instance_id)
            why = f"policy {action.policy}: {action.reason}"
            if action.kind == "alert":
                report.problems.append(Problem("alert", record.provider, why, record.id))
                continue
            if action.kind == "terminate" and record.state in (S.TERMINATED, S.TERMINATING):
                continue
            counts = tally.setdefault(action.policy, [0, 0])
            counts[0] += 1
            command = self.fleet.terminate if action.kind == "terminate" else self.fleet.stop
            problems = len(report.problems)
            try:
                self._act(record, report, partial(command, record.id, reason=why))
            except GpufsmError as exc:
                report.problems.append(Problem("instance-error", record.provider, str(exc),
                                               record.id))
            if len(report.problems) == problems:
                counts[1] += 1
        for name, (asked, done) in sorted(tally.items()):
            report.notes.append(f"policy {name}: acted on {done}/{asked}")


def _changes(after: _Row, moves: Sequence[Move]) -> list[Change]:
    """The report's lines for the moves a batch committed (what their history says)."""
    return [Change(after.id, after.provider, m.from_state.value, m.to_state.value,
                   m.event.value,
                   m.reason or (f"provider reports {m.raw_status!r}" if m.raw_status else ""))
            for m in moves]


def _needs_watching(record: _Row) -> bool:
    """A FAILED row that never reached the provider bills nothing and needs no look."""
    return not (record.state is S.FAILED and not record.billable
                and record.provider_instance_id is None)


class _Ownership:
    """Which listed instances with our tag no live row holds, and why.

    Rows of this pass answer most questions; the rest (an instance whose tag or id no
    row of this pass holds) are answered from one batched ``find_tracked`` over every
    state, so 100k listed instances cost one query per thousand, not 100k queries.
    """

    def __init__(self, store: InstanceStore, provider: str,
                 listing: Iterable[ProviderInstance], rows: Sequence[_Row]) -> None:
        live_pids = {r.provider_instance_id for r in rows if r.provider_instance_id}
        waiting_tags = {r.tag for r in rows if r.provider_instance_id is None}
        self._unheld = [
            i for i in listing
            if i.tag is not None and i.state not in (S.TERMINATED, S.TERMINATING)
            and i.provider_instance_id not in live_pids and i.tag not in waiting_tags]
        self._by_tag: dict[str, list[_Row]] = {}
        self._by_pid: dict[str, list[_Row]] = {}
        if self._unheld:
            for row in store.find_tracked(
                    provider, tags=[i.tag for i in self._unheld if i.tag is not None],
                    provider_instance_ids=[i.provider_instance_id for i in self._unheld]):
                self._by_tag.setdefault(row.tag, []).append(row)
                if row.provider_instance_id is not None:
                    self._by_pid.setdefault(row.provider_instance_id, []).append(row)

    def strays(self) -> list[tuple[ProviderInstance, str, _Row | None]]:
        """(instance, "orphan" | "resurrected" | "duplicate", the row it relates to)."""
        out: list[tuple[ProviderInstance, str, _Row | None]] = []
        for inst in self._unheld:
            by_pid = self._by_pid.get(inst.provider_instance_id, [])
            by_tag = self._by_tag.get(inst.tag or "", [])
            if any(live_row(r) for r in by_pid):
                continue  # tracked (by a row another daemon holds, say)
            if any(live_row(r) and r.provider_instance_id is None for r in by_tag):
                continue  # a launch in doubt that will adopt it by tag
            twin = next((r for r in by_tag if live_row(r)), None)
            if twin is not None:
                out.append((inst, "duplicate", twin))
            elif by_pid or by_tag:
                out.append((inst, "resurrected", (by_pid or by_tag)[-1]))
            else:
                out.append((inst, "orphan", None))
        return out


def live_row(row: InstanceRecord | TrackedInstance) -> bool:
    """May still bill and is watched: not TERMINATED, not a launch refused or written off.
    (Shared with destroy-all, which sorts listed instances the same way.)"""
    return row.state is not S.TERMINATED and not (row.state is S.FAILED and not row.billable)
