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

This module is the pass and its seeing half (listings, quiet rows, observations); what is
done with each row once seen (sync, step, the terminates sent together) is ``_steps``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gpufsm import engine
from gpufsm.adapters import HasSeam, Observation, ProviderAdapter, ProviderInstance
from gpufsm.errors import GpufsmError, InsufficientCredit, ProviderError
from gpufsm.fleet import Fleet
from gpufsm.machines import InstanceState
from gpufsm.notify import WebhookDispatcher
from gpufsm.reconcile._config import ReconcileConfig
from gpufsm.reconcile._listing import PID, WATCHED, Row, View, needs_watching
from gpufsm.reconcile._orphans import Strays
from gpufsm.reconcile._policy import Policy
from gpufsm.reconcile._policy_run import run_policies
from gpufsm.reconcile._report import PassReport, Problem
from gpufsm.reconcile._steps import Steps
from gpufsm.store import TrackedInstance, gc_paused

__all__ = ["Reconciler"]

S = InstanceState


class Reconciler(Steps):
    """Keeps the store true to the providers and makes sure nothing bills that should not.

    Whatever decides a state is persisted (see the module docstring); in memory there is
    only the order in which confirming GETs are spent, which is safe to lose.
    """

    def __init__(self, fleet: Fleet, config: ReconcileConfig | None = None, *,
                 policies: Sequence[Policy] = (), actor: str = "reconciler",
                 dispatcher: WebhookDispatcher | None = None) -> None:
        super().__init__(fleet, config or ReconcileConfig(), actor)
        self.dispatcher = dispatcher
        self.policies = tuple(policies)
        self._claimed: set[str] = set()
        self._last_get: dict[str, float] = {}  # row id → monotonic time of its last GET
        self._everyone: list[TrackedInstance] = []
        self.strays = Strays(fleet, self.config)

    # ---- the pass ----------------------------------------------------------------------

    def run_once(self) -> PassReport:
        started = time.perf_counter()
        calls_before = self._api_calls()
        report = PassReport(started_at=self.fleet.clock.now().isoformat())
        # A pass builds several structures with an entry per instance (the rows, the
        # listing, its indexes, the observations, the batch); at 100k instances each
        # collection re-walks the live ones (~40 ms for a young one, ~0.2 s for a full
        # one). None of them is cyclic: the collector is paused for the whole watch, and
        # they are all dropped before it resumes, so it finds nothing of them to walk.
        with gc_paused():
            self._watch(report)
            self._everyone = []
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

    def _watch(self, report: PassReport) -> None:
        """Every live row (or this daemon's leased share) against its provider's listing."""
        # The slim view: a pass needs state, version, ids and times, not specs; 100k
        # tracked rows load in a fraction of the time and memory of 100k records.
        rows: list[TrackedInstance] = [
            r for r in self.fleet.store.list_tracked(states=WATCHED) if needs_watching(r)]
        self._everyone = rows  # the suspicious-listing check weighs every live row
        if self.config.lease_ttl is not None:
            # by query, not by a list of ids: one statement whatever the fleet's size
            rows = list(self.fleet.store.claim(
                self.actor, now=self.fleet.clock.now(), ttl=self.config.lease_ttl,
                limit=self.config.lease_batch))
        self._claimed = {r.id for r in rows}
        report.instances_seen = len(rows)
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
        by_provider: dict[str, list[tuple[Row, str]]] = {}
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
        view = View(listing)
        if listing is not None and self._suspicious(everyone, view):
            failure = (f"listing shows {len(listing)} instances but misses most of our "
                       f"{len(everyone)} live ones: treated as unknown, nothing changed")
            view = View(None)
        if failure is not None:
            billing = sum(1 for r in everyone if r.billable)
            if billing:  # unseen while money may be going out: loud, and the pass not ok
                report.problems.append(Problem(
                    "blind", provider, f"{failure}; {billing} billable row(s) there are "
                    "not watched"))
            else:
                report.problems.append(Problem("listing-unknown", provider, failure))
        # Quiet rows are listed by id: never missing, so no confirming GET is theirs.
        looked_at = self._not_quiet(rows, view)
        confirm = self._pick_confirmations(looked_at, view)
        seen: list[tuple[TrackedInstance, Observation]] = []
        for row in looked_at:
            try:
                observation = self._observation(row, adapter, view, row.id in confirm)
            except Exception as exc:  # one odd row never stops the pass
                self._row_failed(provider, row.id, exc, report)
                continue
            seen.append((row, observation))
        self._sync_and_step(provider, [r for r, _ in seen], seen, view, report)
        if view.instances is not None:
            self.strays.sweep(provider, view.instances, report, rows)

    def _not_quiet(self, rows: list[TrackedInstance], view: View) -> list[TrackedInstance]:
        """The rows that need a look: all but the quiet ones, most rows of a pass.

        Quiet: RUNNING or STOPPED, and listed exactly as the row holds it. ``decide``
        answers NOTHING for it (``unchanged``: no write, no note) and ``_step`` has
        nothing to do (no deadline in either state, nothing billing unseen), so its
        Observation, its Outcome and its step are skipped, with the same result. The
        orphan check still counts it as known (it reads every row). None is skipped when
        the listing is unknown, or when ``observe`` is replaced (a subclass or a test
        double must see every observation, as the batch path lets it).
        """
        if not view.ok or self.fleet._overridden("observe"):
            return rows
        by_pid = view.by_pid
        running, stopped = S.RUNNING, S.STOPPED
        out: list[TrackedInstance] = []
        for row in rows:
            if row.state is running or row.state is stopped:
                found = by_pid.get(row.provider_instance_id or "")  # None: not quiet
                if found is not None and engine.unchanged(row, found):
                    continue
            out.append(row)
        return out

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

    def _suspicious(self, rows: Sequence[Row], view: View) -> bool:
        """Most of what we know is running is missing: an outage, not a mass extinction."""
        # Every id listed (the usual case): nothing is missing, whatever else holds. The
        # set difference runs in C; the rows are walked only if some id is unlisted.
        unlisted = set(map(PID, rows)).difference(view.by_pid)
        unlisted.discard(None)  # a row without an id: not "known"
        if not unlisted:
            return False  # missing 0: never more than the fraction (config: > 0)
        known = [r for r in rows if r.provider_instance_id is not None
                 and r.state is not S.TERMINATING]
        if len(known) < self.config.suspicious_min_instances:
            return False
        missing = sum(1 for r in known
                      if r.provider_instance_id in unlisted and r.tag not in view.by_tag)
        return missing / len(known) > self.config.suspicious_absent_fraction

    def _pick_confirmations(self, rows: Sequence[Row], view: View) -> set[str]:
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

    def _observation(self, row: Row, adapter: ProviderAdapter, view: View,
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

    def release(self) -> int:
        """Hand this daemon's leases back (a clean shutdown), so others need not wait."""
        if self.config.lease_ttl is None:
            return 0
        return self.fleet.store.release(self.actor)

    # ---- policies ----------------------------------------------------------------------

    def _run_policies(self, report: PassReport) -> None:
        if not self.policies:
            return
        # With leases, policies see (and act on) only this daemon's rows: two daemons
        # must never both terminate the same instance.
        watched = [r for r in self.fleet.store.list(states=WATCHED)
                   if self.config.lease_ttl is None or r.id in self._claimed]
        run_policies(self.policies, self.fleet, watched, act=self._act, report=report,
                     credit_exhausted=self.credit_exhausted | self.fleet.credit_exhausted)
