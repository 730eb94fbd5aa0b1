"""One reconcile pass: list each provider once, sync observations, then step.

The failures this module exists to avoid (and that its tests replay):

* one odd row hanging the loop — every instance is handled in its own try block, and
  an observation without an edge is drift, never an exception;
* an empty or failed listing read as "everything is gone" — a failed, empty-when-it-
  should-not-be or mostly-missing listing is UNKNOWN for the whole provider, and an
  absence counts only when a direct GET says not-found or N good listings agree;
* instances created but never recorded after a crash — CREATING rows are matched to
  listed instances by ownership tag, and tagged instances with no row are reported;
* termination given up while the instance still bills — TERMINATING rows are
  re-terminated with capped backoff forever; after a budget an alert is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from gpufsm.adapters import Observation, ProviderAdapter, ProviderInstance
from gpufsm.errors import GpufsmError, InsufficientCredit, ProviderError, TransitionNotAllowed
from gpufsm.fleet import Fleet
from gpufsm.machines import Event, InstanceState
from gpufsm.notify import WebhookDispatcher
from gpufsm.reconcile._config import OrphanPolicy, ReconcileConfig
from gpufsm.reconcile._policy import Action, Policy, Snapshot
from gpufsm.reconcile._report import Change, PassReport, Problem
from gpufsm.store import InstanceRecord, InstanceStore, TrackedInstance, gc_paused

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

    Stateless across processes except for one in-memory tally that is safe to lose:
    consecutive absences (a restart only delays confirmation). Terminate backoff is
    derived from the history, so it survives restarts and lease takeovers.
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
        self._absent: dict[str, int] = {}
        self._last_get: dict[str, float] = {}  # row id → monotonic time of its last GET
        self._everyone: list[TrackedInstance] = []
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
            rows = [TrackedInstance.of(r) for r in self.fleet.store.claim(
                self.actor, [r.id for r in rows], now=self.fleet.clock.now(),
                ttl=self.config.lease_ttl, limit=self.config.lease_batch)]
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
            report.problems.append(Problem(
                "no-adapter", provider, f"{sum(r.provider == provider for r in rows)} "
                "instances on a provider with no adapter configured: left untouched"))
        self._run_policies(report)
        if self.dispatcher is not None:
            sent = self.dispatcher.deliver_due()
            if sent.delivered or sent.failed or sent.given_up:
                report.notes.append(f"webhooks: delivered {sent.delivered}, failed "
                                    f"{sent.failed}, given up {sent.given_up}")
        report.duration = time.perf_counter() - started
        report.api_calls = self._api_calls() - calls_before
        return report

    def _api_calls(self) -> int:
        """HTTP requests sent so far by adapters that expose their seam (retries count)."""
        total = 0
        for adapter in self.fleet.adapters.values():
            total += getattr(getattr(adapter, "seam", None), "calls", 0)
        return total

    def _provider_pass(self, provider: str, adapter: ProviderAdapter,
                       rows: list[TrackedInstance], report: PassReport) -> None:
        view = _View.of(self._list(provider, adapter, report))
        everyone = [r for r in self._everyone if r.provider == provider]
        if view.instances is not None and self._suspicious(everyone, view):
            report.problems.append(Problem(
                "listing-unknown", provider,
                f"listing shows {len(view.instances)} instances but misses most of our "
                f"{len(rows)} live ones: treated as unknown, nothing changed"))
            view = _View.of(None)
        confirm = self._pick_confirmations(rows, view)
        seen: list[tuple[TrackedInstance, Observation]] = []
        for row in rows:
            try:
                observation = self._observation(row, adapter, view, row.id in confirm)
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)
                continue
            seen.append((row, observation))
        # Sync, the simple part at once: observations that change nothing or make one
        # transition are decided in memory and committed together. The rest (drift, a
        # health gate, adoption, a row that moved meanwhile) go through observe() below,
        # in row order with each row's step, exactly as without batching.
        batched = self.fleet.observe_batched(seen, actor=self.actor)
        for (row, observation), done in zip(seen, batched, strict=True):
            try:
                record: _Row
                if done is None:
                    record = self._sync(row, observation, report)
                else:
                    record = done
                    self._record_changes(row, record, report)
                for _ in range(3):  # a step may lead to another: timed out → terminate
                    after = self._step(record, view, report)
                    if after is None or after.state is record.state:
                        break
                    record = after
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)
        if view.instances is not None:
            self._orphans(provider, view.instances, report, rows)

    def _row_failed(self, provider: str, instance_id: str, exc: Exception,
                    report: PassReport) -> None:
        if isinstance(exc, GpufsmError):
            log.warning("reconcile of %s failed: %s", instance_id, exc)
            report.problems.append(Problem("instance-error", provider, str(exc), instance_id))
            return
        log.error("reconcile of %s crashed", instance_id, exc_info=exc)
        report.problems.append(Problem(
            "instance-error", provider, f"{type(exc).__name__}: {exc}", instance_id))

    def _list(self, provider: str, adapter: ProviderAdapter, report: PassReport
              ) -> Sequence[ProviderInstance] | None:
        try:
            listing = adapter.list_instances()
        except InsufficientCredit as exc:
            self.credit_exhausted.add(provider)
            report.problems.append(Problem("listing-unknown", provider, str(exc)))
            return None
        except ProviderError as exc:
            report.problems.append(Problem("listing-unknown", provider,
                                           f"listing failed: {exc}"))
            return None
        report.listings[provider] = len(listing)
        return listing

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
        missing = [r for r in rows if r.provider_instance_id is not None
                   and r.provider_instance_id not in view.by_pid]
        missing.sort(key=lambda r: self._last_get.get(r.id, float("-inf")))
        return {r.id for r in missing[:self.config.confirm_gets_per_pass]}

    def _observation(self, row: _Row, adapter: ProviderAdapter, view: _View,
                     may_get: bool) -> Observation:
        if not view.ok:
            return Observation.unknown("listing unknown")
        found = (view.by_pid.get(row.provider_instance_id) if row.provider_instance_id
                 else view.by_tag.get(row.tag))
        if found is not None:
            self._absent.pop(row.id, None)
            return Observation.present(found)
        if row.provider_instance_id is None:
            # Counted: a row with no id is written off only after N listings in a row
            # without its tag, never on one (which may be an outage's empty answer).
            self._absent[row.id] = self._absent.get(row.id, 0) + 1
            return Observation.absent(confirmed=False, reason="no instance with our tag")
        if self.config.confirm_gets_per_pass > 0:
            # With GETs allowed, only a direct GET confirms absence: listings can lie
            # (an outage's empty answer), and rows past this pass's budget wait their turn.
            if not may_get:
                return Observation.unknown("missing from the listing; GET on a later pass")
            self._last_get[row.id] = self.fleet.clock.monotonic()
            try:
                seen = adapter.get(row.provider_instance_id)
            except ProviderError as exc:
                return Observation.unknown(f"confirming GET failed: {exc}")
            self._absent.pop(row.id, None)
            if seen is None:
                return Observation.absent(confirmed=True,
                                          reason="absent from the listing; GET: not found")
            return Observation.present(seen)
        # GETs switched off (confirm_gets_per_pass=0): N good listings in a row decide.
        count = self._absent.get(row.id, 0) + 1
        self._absent[row.id] = count
        if count >= self.config.absent_listings_to_confirm:
            return Observation.absent(
                confirmed=True, reason=f"absent from {count} good listings in a row")
        return Observation.absent(confirmed=False, reason=f"absent from {count} listing(s)")

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
        """No instance with this row's tag in N good listings in a row (counted in sync)."""
        return (record.tag not in view.by_tag
                and self._absent.get(record.id, 0) >= self.config.absent_listings_to_confirm)

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
        for h in reversed(self.fleet.history(record.id)):
            if h.to_state is not S.TERMINATING:
                break
            if h.event is Event.TERMINATE:
                attempts += 1
                last = last or h.at  # walking backwards: the first one met is the latest
        # entered by observed_terminating (someone else): count that as the first try
        return max(attempts, 1), last or record.state_entered_at

    def _terminate(self, record: _Row, report: PassReport, why: str
                   ) -> InstanceRecord | None:
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
        lookup = _Lookup(self.fleet.store, provider, list(listing), rows)
        for inst in lookup.unheld():  # a held row with an id is no orphan's: skipped
            if inst.tag is None or inst.state in (S.TERMINATED, None):
                continue
            row = lookup.find(provider, tag=inst.tag)
            if row is not None:
                if row.provider_instance_id is None and (
                        row.state is S.TERMINATED or (row.state is S.FAILED and not row.billable)):
                    self._resurrected(provider, inst, row.id, report)
                continue
            if lookup.find(provider, provider_instance_id=inst.provider_instance_id):
                continue
            policy = self.config.orphans
            report.problems.append(Problem(
                "orphan", provider, f"{inst.provider_instance_id} carries our tag {inst.tag} "
                f"but has no row ({inst.raw_status}); policy: {policy.value}"))
            if policy is OrphanPolicy.REPORT:
                continue
            try:
                record = self.fleet.adopt(provider, inst, reason="orphan adopted by reconciler")
                report.changes.append(Change(record.id, provider, "", record.state.value,
                                             "adopted", f"orphan {inst.provider_instance_id}"))
                if policy is OrphanPolicy.TERMINATE:
                    self._terminate(record, report, "orphan: terminate per configuration")
            except GpufsmError as exc:
                report.problems.append(Problem("instance-error", provider, str(exc)))

    def _resurrected(self, provider: str, inst: ProviderInstance, row_id: str,
                     report: PassReport) -> None:
        """An instance turned up carrying the tag of a row we wrote off as never created.

        The tag is this database's own, so it is certainly ours and certainly unwanted:
        it is adopted into a new row and terminated whatever the orphan policy says.
        """
        report.problems.append(Problem(
            "alert", provider, f"{inst.provider_instance_id} carries the tag of written-off "
            f"row {row_id[:8]} ({inst.raw_status}): adopting and terminating it", row_id))
        try:
            record = self.fleet.adopt(provider, inst, reason=f"resurrected: tag of {row_id}")
            self._terminate(record, report, "written-off launch turned up: terminate")
        except GpufsmError as exc:
            report.problems.append(Problem("instance-error", provider, str(exc), row_id))

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


def _needs_watching(record: _Row) -> bool:
    """A FAILED row that never reached the provider bills nothing and needs no look."""
    return not (record.state is S.FAILED and not record.billable
                and record.provider_instance_id is None)


class _Lookup:
    """``store.find`` for the orphan check, answered from one batched read.

    Why: the check asks, for every tagged instance in a listing, whether a row carries
    its tag or its id; asked one query at a time that is 100k queries for 100k
    instances. Here instances whose tag a row of this pass holds with a provider id are
    left out (such a row is neither an orphan's nor written off, whatever its state
    now, so ``find`` would only have said "known"), the rest are answered from one
    ``find_tracked``, and a question asked a second time (after the loop may have
    adopted or revived that instance) goes to the store, so every answer is the one
    ``find`` would give.
    """

    def __init__(self, store: InstanceStore, provider: str,
                 listing: Sequence[ProviderInstance], rows: Sequence[_Row]) -> None:
        self._store = store
        held = {r.tag for r in rows if r.provider_instance_id is not None}
        self._unheld = [i for i in listing if i.tag is not None and i.tag not in held]
        self._by_tag: dict[str, _Row] = {}
        self._by_pid: dict[str, _Row] = {}
        if self._unheld:
            for row in store.find_tracked(
                    provider, tags=[i.tag for i in self._unheld if i.tag is not None],
                    provider_instance_ids=[i.provider_instance_id for i in self._unheld]):
                self._by_tag.setdefault(row.tag, row)
                if row.provider_instance_id is not None:
                    self._by_pid.setdefault(row.provider_instance_id, row)
        self._asked: set[tuple[str, str]] = set()

    def unheld(self) -> list[ProviderInstance]:
        """The listed instances with our tag that no row of this pass (with an id) holds."""
        return self._unheld

    def find(self, provider: str, *, tag: str | None = None,
             provider_instance_id: str | None = None) -> _Row | None:
        key = ("tag", tag) if tag is not None else ("pid", provider_instance_id or "")
        if key in self._asked:
            return self._store.find(provider, tag=tag, provider_instance_id=provider_instance_id)
        self._asked.add(key)
        if tag is not None:
            return self._by_tag.get(tag)
        return self._by_pid.get(provider_instance_id or "")
