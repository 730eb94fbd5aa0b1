"""The façade schedulers call: launch, start, stop, restart, terminate, wait, observe.

The order of every operation is the promise gpufsm makes:

1. check the command against the table and guards (illegal → nothing called or written);
2. commit the intent (the new state and its history row): the database is always
   ahead of the provider, so a crash leaves a row that says what we were doing;
3. call the provider, outside any transaction;
4. feed what the provider said back as an observation: ``decide`` (pure) says what it
   means, and it is committed with a version check.

Observations are applied where the table has an edge; anything else is recorded as
drift and left alone. ``version`` on a row counts its transitions; a writer who read an
old version gets VersionConflict and must re-read. The rooms live in ``gpufsm.engine``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, overload

from gpufsm import engine
from gpufsm.adapters import Observation, ProviderInstance
from gpufsm.engine import DEFAULT_VISIBILITY_WINDOW, Engine, PlacementPolicy, ProgressCallback
from gpufsm.machines import Event, InstanceState
from gpufsm.placement import Requirements
from gpufsm.store import DriftRecord, InstanceRecord, RunLink, TrackedInstance, TransitionRecord

__all__ = ["DEFAULT_VISIBILITY_WINDOW", "Fleet", "ObserveErrorHandler", "ProgressCallback"]

S = InstanceState

#: Told which instance's observation failed in observe_many, and why.
ObserveErrorHandler = Callable[[str, Exception], None]


class Fleet(Engine):
    """Drive instances on one or more providers, persisting every step.

    ``guards`` are policy checks run on every command (return a reason to refuse).
    One Fleet may be shared by threads: commands on one instance are serialised in
    process, and across processes the row version decides who wins.

    ``command_grace``: providers are eventually consistent, so for this many seconds
    after a command a reading that merely repeats the state the command left (still
    ``running`` just after a stop) is taken as stale, not as news. Without it a stop
    reads as "stop undone" and a restart as "already running again". Inside it, no
    reading moves a row to FAILED either: FAILED leads to a policy terminate, and one
    ambiguous status right after our own start (Vast's ``exited`` while it boots) is
    not evidence enough to destroy a machine.

    ``visibility_window`` (seconds, one for all providers or a mapping provider →
    seconds): after a launch is accepted, a not-found proves nothing for this long; the
    row keeps waiting instead of being concluded gone. TERMINATED is absorbing, so a
    wrong "gone" would stop every later look at a machine that bills.
    """

    # ---- reads ----------------------------------------------------------------------

    def get(self, instance_id: str) -> InstanceRecord:
        return self.store.get(instance_id)

    def list(self, *, provider: str | None = None,
             states: Iterable[InstanceState] | None = None) -> Sequence[InstanceRecord]:
        return self.store.list(provider=provider, states=states)

    def history(self, instance_id: str) -> Sequence[TransitionRecord]:
        return self.store.history(instance_id)

    def drift(self, instance_id: str) -> Sequence[DriftRecord]:
        return self.store.drift(instance_id)

    def absence_provable(self, record: InstanceRecord | TrackedInstance) -> bool:
        """Would a not-found for this row be believed now? Not inside the visibility
        window after its launch was accepted (the reconciler spends no GET there)."""
        return not engine.inside_window(record, self.clock.now(),
                                        self._window(record.provider))

    # ---- commands ---------------------------------------------------------------------

    def launch(self, spec: engine.Launchable, *, reason: str | None = None,
               template: Mapping[str, Any] | None = None,
               policy: PlacementPolicy | None = None, run: RunLink | None = None
               ) -> InstanceRecord:
        """Create one instance. The CREATING row is committed before the provider call.

        A permanent refusal (capacity, credit, bad request) leaves the row FAILED and not
        billable, and is raised. A temporary error leaves the outcome unknown: we look
        for our tag once; found, the instance is adopted and returned; not found, the row
        stays CREATING (billable, to be safe) for the reconciler, and the error is raised.

        Given ``Requirements``, placement picks the machine: matching offers of every
        provider, cheapest first, each tried as above until one is kept; ``template``
        holds the rest of the spec. PlacementFailed lists every attempt and its reason.
        ``run`` marks the row(s) as a generation of a recovering run.
        """
        if isinstance(spec, Requirements):
            return engine.place(self, self.catalog, spec, template, reason=reason,
                                policy=policy, run=run)
        return engine.launch(self, spec, reason, run=run)

    def cancel_placement(self, placement_id: str, *, reason: str
                         ) -> builtins.list[InstanceRecord]:
        """Give a placement up: every machine of its attempts is terminated (see
        ``gpufsm.engine.cancel``), and one that turns up later is surplus."""
        return engine.cancel(self, placement_id, reason)

    def start(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return engine.command(self, instance_id, Event.START, lambda a, pid: a.start(pid),
                              reason)

    def stop(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return engine.command(self, instance_id, Event.STOP, lambda a, pid: a.stop(pid),
                              reason)

    def restart(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return engine.command(self, instance_id, Event.RESTART,
                              lambda a, pid: a.restart(pid), reason)

    def terminate(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        """Commit TERMINATING, call the provider, and confirm absence if it is quick.

        Idempotent: an instance already TERMINATED is returned as it is, with no call,
        so ``finally: fleet.terminate(id)`` is always safe. TERMINATED is set only when
        the provider confirms the instance is gone; otherwise the row stays TERMINATING
        and the reconciler re-issues the terminate until it is.
        """
        return engine.terminate(self, instance_id, reason)

    def time_out(self, instance_id: str, *, reason: str) -> InstanceRecord:
        """The clock's observation: the instance sat in its state past the deadline.

        FAILED keeps it billable, so policy terminates it; raises TransitionNotAllowed
        from states without a ``timed_out`` edge.
        """
        return engine.clock_event(self, instance_id, Event.TIMED_OUT, reason)

    def fail_launch(self, instance_id: str, *, reason: str) -> InstanceRecord:
        """Give up on a CREATING row whose instance never appeared (the launch deadline):
        good listings showed no instance with its tag, so it is marked not billable."""
        return engine.clock_event(self, instance_id, Event.LAUNCH_FAILED, reason,
                                  changes={"billable": False, "last_error": reason})

    def adopt(self, provider: str, found: ProviderInstance, *, reason: str,
              terminate: bool = False, origin: Mapping[str, Any] | None = None,
              ) -> InstanceRecord:
        """Take an untracked instance carrying our tag into the store (an orphan).

        The row is written as a launch (so history starts where every history starts)
        and then brought to what the provider reports. With ``terminate`` the row goes
        in as launch → observed_created → terminate in *one* transaction, and only then
        is the provider called: intent first, here too, so a crash leaves a TERMINATING
        row the reconciler finishes, never a live row nobody means to terminate. A
        failed terminate call is raised as ``terminate`` raises it (``instance_id`` names
        the new row, TERMINATING, which the reconciler finishes).

        ``origin`` is kept in the row's spec (e.g. the row this instance was wrongly
        concluded gone on), so a person reading the history can see why it exists.
        """
        return engine.adopt(self, provider, found, reason=reason, terminate=terminate,
                            origin=origin)

    # ---- observations -------------------------------------------------------------------

    def refresh(self, instance_id: str, *, grace: bool = True) -> InstanceRecord:
        """Read the provider directly and apply what it says. Errors change nothing.
        ``grace=False`` believes a "failed" even just after our own command."""
        return engine.refresh(self, instance_id, grace=grace)

    def observe(self, instance_id: str, observation: Observation, *,
                actor: str | None = None) -> InstanceRecord:
        """Apply one observation (from a listing, a webhook, a test) to an instance.

        PRESENT with a mapped state fires ``observed_<state>`` where the table has an
        edge, else records drift; ABSENT fires ``observed_gone`` only when confirmed;
        UNKNOWN — and a raw status the adapter could not map — changes no state.
        Retries on VersionConflict by re-reading, so a concurrent writer cannot make an
        observation fail. Health probes, when the gate needs them, run outside the lock.
        """
        return engine.observe_one(self, instance_id, observation, actor or self.actor)

    @overload
    def observe_many(self, items: Sequence[tuple[InstanceRecord, Observation]], *,
                     actor: str | None = None, on_error: ObserveErrorHandler | None = None,
                     ) -> builtins.list[InstanceRecord]: ...

    @overload
    def observe_many(self, items: Sequence[tuple[TrackedInstance, Observation]], *,
                     actor: str | None = None, on_error: ObserveErrorHandler | None = None,
                     ) -> builtins.list[TrackedInstance]: ...

    def observe_many(self, items: Sequence[tuple[Any, Observation]], *,
                     actor: str | None = None, on_error: ObserveErrorHandler | None = None,
                     ) -> builtins.list[Any]:
        """Apply many observations: decided together, their moves committed together.

        ``items`` pairs each instance *as the caller last read it* (an InstanceRecord,
        or the TrackedInstance a reconcile pass holds) with what was seen. What
        ``observe_batched`` could not do goes through ``observe``, in order.

        Returns each row after, of the kind given. ``on_error(instance_id, exc)`` hears
        of an observation that failed (its row is returned as given); without it the
        first failure is raised, as a loop over ``observe`` would raise it.
        """
        who = actor or self.actor
        results = self.observe_batched(items, actor=who)
        for i, done in enumerate(results):
            if done is not None:
                continue
            row, observation = items[i]
            try:
                after = self.observe(row.id, observation, actor=who)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(row.id, exc)
                results[i] = row
                continue
            results[i] = TrackedInstance.of(after) if isinstance(row, TrackedInstance) else after
        return results

    def observe_batched(self, items: Sequence[tuple[Any, Observation]], *,
                        actor: str | None = None) -> builtins.list[Any]:
        """The half of ``observe_many`` that commits together; None marks the rest.

        Every item is decided against the row given (``decide``); probes the health
        gate asks for run across rows, outside any lock; every row's moves, drift and
        facts commit in one ``store.apply_batch``. An entry is the row after (of the
        kind given), or None when the item is left to ``observe``: another thread holds
        the row, it moved since it was read, or its write failed.

        When ``observe`` is overridden (a subclass, a test double) every entry is None.
        """
        return [None if o is None else o.after
                for o in self._observe_outcomes(items, actor or self.actor)]

    def _observe_outcomes(self, items: Sequence[tuple[Any, Observation]], actor: str
                          ) -> builtins.list[engine.Outcome | None]:
        """``observe_batched`` with the moves each item committed (the reconciler's
        report is built from them, not from a history read per row)."""
        if self._overridden("observe"):
            return [None] * len(items)
        return engine.observe_batch(self, items, actor)

    def _terminate_outcomes(self, requests: Sequence[tuple[str, str | None]]
                            ) -> dict[str, engine.Ended]:
        """A pass's terminates, intents committed together (``engine.terminate_batch``);
        ids not answered (all, when ``terminate`` is overridden) go through it."""
        if self._overridden("terminate"):
            return {}
        return engine.terminate_batch(self, requests)

    def _overridden(self, name: str) -> bool:
        """A subclass or test double replaced this method: the batch paths step aside."""
        return name in vars(self) or getattr(type(self), name) is not getattr(Fleet, name)

    # ---- waiting ------------------------------------------------------------------------

    def wait_for(
        self,
        instance_id: str,
        state: InstanceState | Iterable[InstanceState],
        *,
        timeout: float,
        poll_interval: float = 5.0,
        on_progress: ProgressCallback | None = None,
    ) -> InstanceRecord:
        """Poll the provider until the instance is in ``state`` (or one of them).

        Stops early with WaitFailed when the target cannot be reached without a command
        (waiting for RUNNING from FAILED, say), and with WaitTimeout after ``timeout``.
        """
        return engine.wait_for(self.refresh, self.clock, instance_id, state, timeout=timeout,
                               poll_interval=poll_interval, on_progress=on_progress)

    @overload
    def session(self, spec: engine.Launchable, *, template: Mapping[str, Any] | None = None,
                timeout: float = 1800.0, poll_interval: float = 5.0,
                on_progress: ProgressCallback | None = None, recovery: None = None,
                ) -> AbstractContextManager[InstanceRecord]: ...

    @overload
    def session(self, spec: engine.Launchable, *, template: Mapping[str, Any] | None = None,
                timeout: float = 1800.0, poll_interval: float = 5.0,
                on_progress: ProgressCallback | None = None, recovery: engine.Recovery | int,
                ) -> AbstractContextManager[engine.Recovering]: ...

    def session(self, spec: engine.Launchable, *, template: Mapping[str, Any] | None = None,
                timeout: float = 1800.0, poll_interval: float = 5.0,
                on_progress: ProgressCallback | None = None,
                recovery: engine.Recovery | int | None = None) -> AbstractContextManager[Any]:
        """Launch (a spec, or Requirements with a ``template``), wait for RUNNING, yield,
        and always terminate, also on Ctrl-C: every machine launched, placement attempts
        too. With ``recovery`` (N replacements, or a ``Recovery``) it yields a run whose
        ``run(job)`` re-runs ``job`` on a replacement when the machine is lost."""
        return engine.session(self, spec, template=template, timeout=timeout,
                              poll_interval=poll_interval, on_progress=on_progress,
                              recovery=recovery)
