"""The façade schedulers call: launch, start, stop, restart, terminate, wait, observe.

The order of every operation is the promise gpufsm makes:

1. check the command against the table and guards in memory (illegal → nothing
   called, nothing written);
2. commit the intent (the new state and its history row) — the database is always
   ahead of the provider, so a crash leaves a row that says what we were doing;
3. call the provider, outside any transaction;
4. feed what the provider said back as an observation.

Observations are applied where the table has an edge; anything else is recorded as
drift and left alone. ``version`` on a row counts its transitions; a writer who read an
old version gets VersionConflict and must re-read.
"""

from __future__ import annotations

import builtins
import copy
import logging
import os
import secrets
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast, overload

from pydantic import ValidationError as PydanticValidationError

from gpufsm.adapters import (
    LaunchRequest,
    Observation,
    ObservationKind,
    ProviderAdapter,
    ProviderInstance,
    ownership_tag,
)
from gpufsm.clock import Clock, SystemClock
from gpufsm.errors import (
    GpufsmError,
    InsufficientCredit,
    PermanentProviderError,
    ProviderError,
    RateLimited,
    TemporaryProviderError,
    TransitionNotAllowed,
    ValidationError,
    VersionConflict,
    WaitFailed,
    WaitTimeout,
)
from gpufsm.health import GateVerdict, HealthSpec, ProbeResult, gate_verdict, run_probes
from gpufsm.machines import (
    TRANSITIONS,
    Capabilities,
    EdgeKind,
    Event,
    Guard,
    InstanceState,
    check,
    edges_from,
    event_for_observed_state,
    reachable_by_observation,
)
from gpufsm.notify import Listener, TransitionEvent, Webhook
from gpufsm.specs import InstanceSpec, parse_spec, stored_spec
from gpufsm.store import (
    DriftRecord,
    InstanceRecord,
    InstanceStore,
    Move,
    TrackedInstance,
    TransitionRecord,
)

__all__ = ["DEFAULT_VISIBILITY_WINDOW", "Fleet", "ObserveErrorHandler", "ProgressCallback"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState
_EDGES = edges_from(TRANSITIONS)
_KIND = {t.event: t.kind for t in TRANSITIONS}
_CONFLICT_RETRIES = 3

#: Seconds after a provider accepts a launch during which its reads may not show the
#: instance yet (GET answers its own not-found, listings omit it). Eventual consistency
#: after a create is documented behaviour of real clouds (SkyPilot retries visibility
#: after a create for it); two minutes is far above the seconds seen, and costs only a
#: late "gone" for a launch the provider really dropped.
DEFAULT_VISIBILITY_WINDOW = 120.0

#: Called on every poll of wait_for with the freshest record.
ProgressCallback = Callable[[InstanceRecord], None]
#: Told which instance's observation failed in observe_many, and why.
ObserveErrorHandler = Callable[[str, Exception], None]


class _InstanceLock:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()


class Fleet:
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

    def __init__(
        self,
        store: InstanceStore,
        adapters: Mapping[str, ProviderAdapter] | Iterable[ProviderAdapter],
        *,
        clock: Clock | None = None,
        guards: Sequence[Guard] = (),
        actor: str | None = None,
        command_grace: float = 30.0,
        webhooks: Sequence[Webhook] = (),
        visibility_window: float | Mapping[str, float] = DEFAULT_VISIBILITY_WINDOW,
    ) -> None:
        self.store = store
        self.command_grace = command_grace
        self.visibility_window = visibility_window
        self.webhooks = tuple(webhooks)
        self._listeners: list[Listener] = []
        if isinstance(adapters, Mapping):
            self.adapters: dict[str, ProviderAdapter] = dict(adapters)
        else:
            self.adapters = {a.name: a for a in adapters}
        self.clock: Clock = clock or SystemClock()
        self.guards = tuple(guards)
        self.actor = actor or f"{socket.gethostname()}/{os.getpid()}"
        self._locks: weakref.WeakValueDictionary[str, _InstanceLock] = (
            weakref.WeakValueDictionary())
        self._locks_guard = threading.Lock()
        #: Providers that refused a call for lack of credit (read by the emergency policy).
        self.credit_exhausted: set[str] = set()

    # ---- listeners ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every transition this Fleet commits; returns unsubscribe.

        Listeners run in the committing thread, after the commit, so they only ever
        hear about what is in the database; an exception in one is logged and ignored.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _announce(self, event: TransitionEvent) -> list[tuple[str, dict[str, Any]]]:
        return [(w.url, event.payload()) for w in self.webhooks if w.wants(event)]

    def _notify(self, event: TransitionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener %r failed on %s", listener, event.event)

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

    # ---- commands ---------------------------------------------------------------------

    def launch(self, spec: InstanceSpec | Mapping[str, Any], *, reason: str | None = None
               ) -> InstanceRecord:
        """Create one instance. The CREATING row is committed before the provider call.

        A permanent refusal (capacity, credit, bad request) leaves the row FAILED and not
        billable, and is raised. A temporary error leaves the outcome unknown: we look
        for our tag once; found, the instance is adopted and returned; not found, the row
        stays CREATING (billable, to be safe) for the reconciler, and the error is raised.
        """
        spec = parse_spec(spec)
        adapter = self._adapter(spec.provider)
        adapter.validate(spec)
        token = secrets.token_hex(8)
        now = self.clock.now()
        record = InstanceRecord(
            id=str(uuid.uuid4()), provider=spec.provider, state=S.CREATING, version=1,
            client_token=token, tag=ownership_tag(token), name=spec.name, billable=True,
            spec=stored_spec(spec), created_at=now, updated_at=now,
            state_entered_at=now, region=spec.region, instance_type=spec.instance_type,
        )
        self._insert(record, reason)
        with self._lock(record.id):
            try:
                pid = adapter.launch(LaunchRequest(spec, record.tag, token))
            except ProviderError as exc:
                exc.instance_id = record.id
                if isinstance(exc, InsufficientCredit):
                    self.credit_exhausted.add(record.provider)
                after = self._launch_failed(adapter, record, exc)
                if after.provider_instance_id is None:
                    raise
                return after  # the call failed but the instance exists: adopted
            except Exception as exc:
                self._note_error(record, exc)
                raise
            return self._created(record, pid)

    def start(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return self._command(instance_id, Event.START, lambda a, pid: a.start(pid), reason)

    def stop(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return self._command(instance_id, Event.STOP, lambda a, pid: a.stop(pid), reason)

    def restart(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        return self._command(instance_id, Event.RESTART, lambda a, pid: a.restart(pid), reason)

    def terminate(self, instance_id: str, *, reason: str | None = None) -> InstanceRecord:
        """Commit TERMINATING, call the provider, and confirm absence if it is quick.

        Idempotent: an instance already TERMINATED is returned as it is, with no call,
        so ``finally: fleet.terminate(id)`` is always safe. TERMINATED is set only when
        the provider confirms the instance is gone; otherwise the row stays TERMINATING
        and the reconciler re-issues the terminate until it is.
        """
        with self._lock(instance_id):
            record = self.store.get(instance_id)
            if record.state is S.TERMINATED:
                return record
            adapter = self._adapter(record.provider)
            record = self._apply(record, Event.TERMINATE, reason=reason, adapter=adapter)
            pid = record.provider_instance_id
            if pid is None:
                if not record.billable:
                    return self._apply(record, Event.OBSERVED_GONE,
                                       reason="the launch was refused: nothing was created")
                found = self._find_tagged(adapter, record.tag)
                if found is None:
                    return record  # maybe still being created: the reconciler will see
                record = self.store.update(
                    record.id, expected_version=record.version, at=self.clock.now(),
                    changes={"provider_instance_id": found.provider_instance_id,
                             "accepted_at": record.accepted_at or self.clock.now()})
            return self._send_terminate(record, adapter)

    def _send_terminate(self, record: InstanceRecord, adapter: ProviderAdapter
                        ) -> InstanceRecord:
        """The provider call of a terminate already committed (TERMINATING), then a look.

        A failure is recorded on the row and raised: the row stays TERMINATING, and the
        reconciler re-issues the call until the provider confirms the instance is gone.
        """
        assert record.provider_instance_id is not None
        try:
            adapter.terminate(record.provider_instance_id)
        except ProviderError as exc:
            self._note_error(record, exc)
            raise
        return self._confirm(record, adapter)

    # ---- observations -------------------------------------------------------------------

    def refresh(self, instance_id: str) -> InstanceRecord:
        """Read the provider directly and apply what it says. Errors change nothing."""
        with self._lock(instance_id):
            record = self.store.get(instance_id)
            if record.state is S.TERMINATED:
                return record
            adapter = self._adapter(record.provider)
            if record.provider_instance_id is None:
                if not record.billable:
                    return record
                try:
                    found = self._find_tagged(adapter, record.tag, quiet=False)
                except ProviderError:
                    return record
                if found is None:
                    return record
                record = self._observe(record, Observation.present(found), self.actor)
                if record.state is S.TERMINATING and record.provider_instance_id is not None:
                    # terminated while the launch was in doubt: the instance turned up
                    # after all, so the terminate we could not send then is sent now
                    try:
                        return self._send_terminate(record, adapter)
                    except ProviderError:
                        return self.store.get(record.id)
                return record
            return self._confirm(record, adapter)

    def observe(self, instance_id: str, observation: Observation, *,
                actor: str | None = None) -> InstanceRecord:
        """Apply one observation (from a listing, a webhook, a test) to an instance.

        PRESENT with a mapped state fires ``observed_<state>`` where the table has an
        edge, else records drift; ABSENT fires ``observed_gone`` only when confirmed;
        UNKNOWN — and a raw status the adapter could not map — changes no state.
        Retries on VersionConflict by re-reading, so a concurrent writer cannot make an
        observation fail.
        """
        with self._lock(instance_id):
            for _ in range(_CONFLICT_RETRIES):
                record = self.store.get(instance_id)
                try:
                    return self._observe(record, observation, actor or self.actor)
                except VersionConflict:
                    continue
            return self.store.get(instance_id)

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
        """Apply many observations: ``observe`` for each, the simple ones in one commit.

        ``items`` pairs each instance *as the caller last read it* (an InstanceRecord,
        or the TrackedInstance a reconcile pass holds) with what was seen. What
        ``observe_batched`` can commit together is committed first; every other item
        then goes through ``observe``, in order.

        Returns the row after its observation, of the kind given (a TrackedInstance
        stays a TrackedInstance). ``on_error(instance_id, exc)``, when given, hears of
        an instance whose observation failed, and its row is returned as given; without
        it the first failure is raised, as a loop over ``observe`` would raise it.
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

    @overload
    def observe_batched(self, items: Sequence[tuple[InstanceRecord, Observation]], *,
                        actor: str | None = None) -> builtins.list[InstanceRecord | None]: ...

    @overload
    def observe_batched(self, items: Sequence[tuple[TrackedInstance, Observation]], *,
                        actor: str | None = None) -> builtins.list[TrackedInstance | None]: ...

    def observe_batched(self, items: Sequence[tuple[Any, Observation]], *,
                        actor: str | None = None) -> builtins.list[Any]:
        """The half of ``observe_many`` that commits together; None marks the rest.

        Each item is decided by the same code ``observe`` runs, against the row given
        instead of a fresh read. The simple outcomes — nothing to write, or exactly one
        transition — are done here: the transitions by one ``store.transition_many``,
        with their history and webhook messages, and listeners hear of them after the
        commit. Their entry is the row after the observation (of the kind given).

        Every other item's entry is None: the caller passes it to ``observe``, which
        reads the row afresh. That is facts-only updates, drift, a second transition (a
        CREATING row found running), a health gate with probes to run, a row that moved
        since it was read (a conflict), a row another thread is working on, and every
        item when the batch write itself fails. Nothing here raises for one item.

        A reconcile pass uses this rather than ``observe_many`` so the items that need
        ``observe`` are handled in row order with the rest of their row's work, as they
        were before batching. When ``observe`` is overridden (a subclass, a test double)
        every entry is None: an override must see every observation.
        """
        if "observe" in vars(self) or type(self).observe is not Fleet.observe:
            return [None] * len(items)
        results: builtins.list[Any] = [row for row, _ in items]
        for i in self._observe_batch(items, results, actor or self.actor):
            results[i] = None
        return results

    def time_out(self, instance_id: str, *, reason: str) -> InstanceRecord:
        """The clock's observation: the instance sat in its state past the deadline.

        FAILED keeps it billable, so policy terminates it; raises TransitionNotAllowed
        from states without a ``timed_out`` edge.
        """
        with self._lock(instance_id):
            record = self.store.get(instance_id)
            return self._apply(record, Event.TIMED_OUT, reason=reason)

    def fail_launch(self, instance_id: str, *, reason: str) -> InstanceRecord:
        """Give up on a CREATING row whose instance never appeared (the launch deadline).

        Called only once good listings have shown no instance with the row's tag, so
        the row is marked not billable: there is nothing to pay for.
        """
        with self._lock(instance_id):
            record = self.store.get(instance_id)
            return self._apply(record, Event.LAUNCH_FAILED, reason=reason,
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
        if found.tag is None:
            raise ValidationError("tag", "only instances carrying our ownership tag are adopted")
        adapter = self._adapter(provider)
        now = self.clock.now()
        token = found.tag.removeprefix("gpufsm-")
        record = InstanceRecord(
            id=str(uuid.uuid4()), provider=provider, state=S.CREATING, version=1,
            client_token=f"adopted-{token}-{secrets.token_hex(4)}", tag=found.tag,
            name=found.name, billable=True,
            spec={"provider": provider, "adopted": True, **(origin or {})},
            created_at=now, updated_at=now, state_entered_at=now, region=found.region,
            instance_type=found.instance_type, price_per_hour=found.price_per_hour,
            # the id goes in with the row: two daemons adopting one orphan collide on the
            # unique live (provider, provider id) instead of both succeeding
            provider_instance_id=found.provider_instance_id, accepted_at=now,
        )
        if not terminate:
            self._insert(record, reason)
            with self._lock(record.id):
                return self._adopt(record, found)
        with self._lock(record.id):
            record = self._insert_terminating(record, adapter, found, reason)
            try:
                return self._send_terminate(record, adapter)
            except ProviderError as exc:
                exc.instance_id = record.id
                raise

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
        targets = frozenset(
            InstanceState(s) for s in ([state] if isinstance(state, str) else state))
        if not targets:
            raise ValueError("wait_for needs at least one target state")
        wanted = "|".join(sorted(targets))
        deadline = self.clock.monotonic() + timeout
        while True:
            record = self.refresh(instance_id)
            if on_progress is not None:
                on_progress(record)
            if record.state in targets:
                return record
            if not reachable_by_observation(record.state) & targets:
                raise WaitFailed(instance_id, wanted, record.state.value, record.last_error)
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise WaitTimeout(instance_id, wanted, record.state.value, timeout)
            self.clock.sleep(min(poll_interval, remaining))

    @contextmanager
    def session(self, spec: InstanceSpec | Mapping[str, Any], *, timeout: float = 1800.0,
                poll_interval: float = 5.0, on_progress: ProgressCallback | None = None,
                ) -> Iterator[InstanceRecord]:
        """Launch, wait for RUNNING, yield, and always terminate — also on Ctrl-C.

        A failed terminate in clean-up is logged, not raised over the body's own error;
        the row is TERMINATING by then, so the reconciler finishes the job.
        """
        record = self.launch(spec)
        try:
            yield self.wait_for(record.id, S.RUNNING, timeout=timeout,
                                poll_interval=poll_interval, on_progress=on_progress)
        finally:
            try:
                self.terminate(record.id, reason="session ended")
            except GpufsmError:
                log.exception("terminate of %s failed; the row is TERMINATING and the "
                              "reconciler will retry", record.id)

    # ---- internals ------------------------------------------------------------------

    def _adapter(self, provider: str) -> ProviderAdapter:
        try:
            return self.adapters[provider]
        except KeyError:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise ValidationError("provider", f"no adapter for {provider!r} (have: {known})",
                                  value=provider) from None

    def _observe_batch(self, items: Sequence[tuple[Any, Observation]],
                       results: MutableSequence[Any], actor: str) -> MutableSequence[int]:
        """Decide every item, commit the single transitions together, update ``results``.

        Returns the indexes left for the single path, in order.
        """
        now = self.clock.now()
        rehearsal = _Rehearsal(self, now)
        planned = []
        single = []
        with rehearsal.hushed():
            for i, (row, observation) in enumerate(items):
                try:
                    plan = rehearsal.plan(row, observation, actor)
                except _NotSimple:
                    single.append(i)
                    continue
                except Exception:  # the single path meets it again, and reports it
                    log.debug("planning the observation of %s failed", row.id,
                              exc_info=True)
                    single.append(i)
                    continue
                if plan is not None:
                    planned.append((i, plan))
        if planned:
            single.extend(self._commit_planned(planned, results, actor, now))
            single.sort()
        return single

    def _commit_planned(self, planned: Sequence[tuple[int, _Plan]],
                        results: MutableSequence[Any], actor: str, at: datetime
                        ) -> MutableSequence[int]:
        """One transition_many for the planned moves; returns the indexes it did not apply.

        Each instance's lock is taken without waiting: one held by another thread (a
        command under way) sends that instance to the single path, which waits its turn.
        """
        held = []
        mine = []
        busy = []
        for i, plan in planned:
            holder = self._lock_holder(plan.move.instance_id)
            if holder.lock.acquire(blocking=False):
                held.append(holder)
                mine.append((i, plan))
            else:
                busy.append(i)
        try:
            if not mine:
                return busy
            try:
                outcome = self.store.transition_many([p.move for _, p in mine], actor=actor,
                                                     at=at)
            except Exception:
                log.warning("batched write of %d observations failed: applying them one by "
                            "one", len(mine), exc_info=True)
                return sorted(busy + [i for i, _ in mine])
            left = busy
            for i, plan in mine:
                if plan.move.instance_id in outcome.applied:
                    results[i] = plan.after
                    for heard in plan.heard:
                        self._notify(heard)
                else:
                    left.append(i)
            return left
        finally:
            for holder in held:
                holder.lock.release()

    def _lock_holder(self, instance_id: str) -> _InstanceLock:
        with self._locks_guard:
            holder = self._locks.get(instance_id)
            if holder is None:
                holder = _InstanceLock()
                self._locks[instance_id] = holder
        return holder

    def _lock(self, instance_id: str) -> _Held:
        """This process's lock for one instance: one worker owns an instance at a time."""
        with self._locks_guard:
            holder = self._locks.get(instance_id)
            if holder is None:
                holder = _InstanceLock()
                self._locks[instance_id] = holder
        return _Held(holder)

    def _command(self, instance_id: str, event: Event,
                 call: Callable[[ProviderAdapter, str], None],
                 reason: str | None) -> InstanceRecord:
        with self._lock(instance_id):
            record = self.store.get(instance_id)
            adapter = self._adapter(record.provider)
            check(record.id, record.state, event, capabilities=adapter.capabilities,
                  guards=self.guards, instance=record)
            pid = record.provider_instance_id
            if pid is None:
                raise TransitionNotAllowed(record.id, record.state.value, event.value,
                                           "the provider never created it (no provider id)")
            record = self._apply(record, event, reason=reason, adapter=adapter)
            try:
                call(adapter, pid)
            except PermanentProviderError as exc:
                # Certainly refused (or gone): the provider's own view puts the row right
                # now, without the grace a command that did happen would get.
                self._note_error(record, exc)
                self._confirm(self.store.get(record.id), adapter, grace=False)
                raise
            except Exception as exc:
                self._note_error(record, exc)
                raise
            return record

    def _apply(self, record: InstanceRecord, event: Event, *, reason: str | None = None,
               raw_status: str | None = None, changes: Mapping[str, Any] | None = None,
               adapter: ProviderAdapter | None = None, actor: str | None = None,
               ) -> InstanceRecord:
        """Fire ``event`` through the machine and commit it with its history row."""
        move, announced = self._move(record, event, reason=reason, raw_status=raw_status,
                                     changes=changes, adapter=adapter, actor=actor)
        after = self.store.transition(
            record.id, expected_version=move.expected_version, from_state=move.from_state,
            to_state=move.to_state, event=move.event, kind=move.kind, actor=announced.actor,
            at=announced.at, reason=move.reason, raw_status=move.raw_status,
            changes=move.changes, outbox=move.outbox,
        )
        self._notify(announced)
        return after

    def _move(self, record: InstanceRecord, event: Event, *, reason: str | None = None,
              raw_status: str | None = None, changes: Mapping[str, Any] | None = None,
              adapter: ProviderAdapter | None = None, actor: str | None = None,
              ) -> tuple[Move, TransitionEvent]:
        """Check ``event`` against the machine and guards; the Move to commit, and what
        listeners will hear once it is committed. Raises TransitionNotAllowed."""
        kind = _KIND[event]
        dest = check(
            record.id, record.state, event,
            capabilities=adapter.capabilities if adapter else Capabilities(),
            guards=self.guards if kind is EdgeKind.COMMAND else (),
            instance=record,
        )
        values = dict(changes or {})
        if dest is S.TERMINATED:
            values["billable"] = False
        at = self.clock.now()
        announced = TransitionEvent(
            instance_id=record.id, provider=record.provider,
            provider_instance_id=values.get("provider_instance_id",
                                            record.provider_instance_id),
            name=record.name, tag=record.tag, from_state=record.state, to_state=dest,
            event=event, kind=kind, actor=actor or self.actor, version=record.version + 1,
            at=at, billable=values.get("billable", record.billable), reason=reason,
            raw_status=raw_status,
        )
        move = Move(record.id, record.version, record.state, dest, event, kind, reason,
                    raw_status, values, tuple(self._announce(announced)))
        return move, announced

    def _insert_terminating(self, record: InstanceRecord, adapter: ProviderAdapter,
                            found: ProviderInstance, reason: str) -> InstanceRecord:
        """Insert ``record`` (CREATING, id known) and move it to TERMINATING, one commit.

        Each step is checked like any other (the terminate against the guards too), and
        listeners hear of all three once the transaction has committed.
        """
        launched = self._announced_launch(record, reason)
        created_move, created = self._move(
            record, Event.OBSERVED_CREATED, reason="found by ownership tag",
            raw_status=found.raw_status, adapter=adapter)
        created_row = record.with_changes(**created_move.written(created.at))
        terminate_move, terminating = self._move(created_row, Event.TERMINATE, reason=reason,
                                                 adapter=adapter)
        after = self.store.insert(record, actor=self.actor, reason=reason,
                                  outbox=self._announce(launched),
                                  then=(created_move, terminate_move))
        for heard in (launched, created, terminating):
            self._notify(heard)
        return after

    def _insert(self, record: InstanceRecord, reason: str | None) -> None:
        """Write a new row with its launch history row (and its webhook messages)."""
        announced = self._announced_launch(record, reason)
        self.store.insert(record, actor=self.actor, reason=reason,
                          outbox=self._announce(announced))
        self._notify(announced)

    def _announced_launch(self, record: InstanceRecord, reason: str | None
                          ) -> TransitionEvent:
        return TransitionEvent(
            instance_id=record.id, provider=record.provider,
            provider_instance_id=record.provider_instance_id, name=record.name,
            tag=record.tag, from_state=None, to_state=record.state, event=Event.LAUNCH,
            kind=EdgeKind.COMMAND, actor=self.actor, version=record.version,
            at=record.created_at, billable=record.billable, reason=reason,
        )

    def _launch_failed(self, adapter: ProviderAdapter, record: InstanceRecord,
                       exc: ProviderError) -> InstanceRecord:
        if _surely_refused(exc):
            return self._apply(record, Event.LAUNCH_FAILED, reason=str(exc),
                               changes={"billable": False, "last_error": str(exc)})
        # Temporary: the outcome is unknown. Look for our tag once.
        record = self._note_error(record, exc)
        found = self._find_tagged(adapter, record.tag)
        if found is None:
            return record  # stays CREATING and billable; the reconciler decides
        log.info("launch of %s answered %s but the instance exists: adopted", record.id,
                 type(exc).__name__)
        return self._adopt(record, found)

    def _created(self, record: InstanceRecord, pid: str) -> InstanceRecord:
        """Store the provider id; if someone moved the row meanwhile, still keep the id."""
        try:
            return self._apply(record, Event.OBSERVED_CREATED,
                               changes={"provider_instance_id": pid, "last_error": None,
                                        "accepted_at": self.clock.now()})
        except VersionConflict:
            current = self.store.get(record.id)
            current = self.store.update(current.id, expected_version=current.version,
                                        at=self.clock.now(),
                                        changes={"provider_instance_id": pid,
                                                 "accepted_at": self.clock.now()})
            if current.state is S.TERMINATING:
                self._adapter(current.provider).terminate(pid)
            return current

    def _adopt(self, record: InstanceRecord, found: ProviderInstance) -> InstanceRecord:
        record = self._apply(record, Event.OBSERVED_CREATED,
                             reason="found by ownership tag", raw_status=found.raw_status,
                             changes={"provider_instance_id": found.provider_instance_id,
                                      "accepted_at": self.clock.now()})
        return self._observe(record, Observation.present(found), self.actor)

    def _confirm(self, record: InstanceRecord, adapter: ProviderAdapter, *, grace: bool = True
                 ) -> InstanceRecord:
        assert record.provider_instance_id is not None
        try:
            seen = adapter.get(record.provider_instance_id)
        except ProviderError as exc:
            log.info("refresh of %s failed (%s): no change", record.id, exc)
            return record
        observation = (Observation.present(seen) if seen is not None
                       else Observation.absent(confirmed=True, reason="provider: not found"))
        return self._observe(record, observation, self.actor, grace=grace)

    def _find_tagged(self, adapter: ProviderAdapter, tag: str, *, quiet: bool = True
                     ) -> ProviderInstance | None:
        try:
            listing = adapter.list_instances()
        except ProviderError as exc:
            if not quiet:
                raise
            log.info("listing %s to find %s failed: %s", adapter.name, tag, exc)
            return None
        for inst in listing:
            if inst.tag == tag:
                return inst
        return None

    def _note_error(self, record: InstanceRecord, exc: BaseException) -> InstanceRecord:
        try:
            current = self.store.get(record.id)
            return self.store.update(current.id, expected_version=current.version,
                                     at=self.clock.now(),
                                     changes={"last_error": f"{type(exc).__name__}: {exc}"})
        except GpufsmError:
            log.exception("could not record the error on %s", record.id)
            return record

    def _observe(self, record: InstanceRecord, observation: Observation, actor: str, *,
                 grace: bool = True) -> InstanceRecord:
        if observation.kind is ObservationKind.UNKNOWN or record.state is S.TERMINATED:
            return record
        if observation.kind is ObservationKind.ABSENT:
            if not observation.confirmed:
                # One more good listing without it: counted on the row, so the evidence
                # survives the process (a cron --once counts as a daemon does).
                return self._facts(record, {
                    "missing_count": record.missing_count + 1,
                    "missing_since": record.missing_since or self.clock.now()})
            if self._not_yet_visible(record):
                log.debug("%s: not found %.0fs after the launch was accepted, inside the "
                          "visibility window: not yet visible, not gone", record.id,
                          self._since_accepted(record))
                return record
            return self._edge_or_drift(record, Event.OBSERVED_GONE, raw_status=None, facts={},
                                       reason=observation.reason, actor=actor)
        seen = observation.instance
        assert seen is not None
        now = self.clock.now()
        facts: dict[str, Any] = {"last_raw_status": seen.raw_status, "last_seen_at": now}
        if seen.ip is not None:
            facts["ip"] = seen.ip
        if record.missing_count:
            facts.update(missing_count=0, missing_since=None)
        if record.provider_instance_id is None and record.state is not S.CREATING:
            # found by tag after the row moved on (a launch in doubt, then terminated):
            # keep the id, or nothing could ever terminate the instance
            facts["provider_instance_id"] = seen.provider_instance_id
            facts["accepted_at"] = record.accepted_at or now
        if seen.price_per_hour is not None:
            facts["price_per_hour"] = seen.price_per_hour
        if seen.region is not None and record.region is None:
            facts["region"] = seen.region  # where the provider placed it (Novita picks)
        if record.state is S.CREATING and seen.state is not S.TERMINATED:
            record = self._apply(record, Event.OBSERVED_CREATED, raw_status=seen.raw_status,
                                 actor=actor, changes={
                                     "provider_instance_id": seen.provider_instance_id,
                                     "accepted_at": now})
        if seen.state is None:
            log.warning("%s reports raw status %r for %s, which gpufsm does not know: "
                        "state left at %s", record.provider, seen.raw_status, record.id,
                        record.state)
            return self._facts(record, facts)
        if seen.state is record.state or (grace and self._stale(record, seen)):
            return self._facts(record, facts)
        if seen.state is S.FAILED and grace and self._just_commanded(record):
            # Inside the grace of our own command (or the launch), one "failed" reading is
            # no evidence to destroy a machine by: it waits for a reading after the grace.
            log.info("%s: %s reports %r %.0fs after our command: not taken as failed yet",
                     record.id, record.provider, seen.raw_status,
                     (now - record.state_entered_at).total_seconds())
            return self._facts(record, facts)
        if seen.state is S.RUNNING and record.state is not S.RUNNING:
            gated = self._health_gate(record, seen, facts, actor)
            if gated is not None:
                return gated
        event = event_for_observed_state(seen.state)
        if seen.detail:
            facts["last_error"] = seen.detail
        return self._edge_or_drift(record, event, raw_status=seen.raw_status, facts=facts,
                                   reason=seen.detail, actor=actor)

    def _health_gate(self, record: InstanceRecord, seen: ProviderInstance,
                     facts: dict[str, Any], actor: str) -> InstanceRecord | None:
        """Hold an instance the provider calls running until its probes pass.

        Returns None to let ``observed_running`` through (no probes configured, or they
        all passed: then the results ride along in ``facts``); otherwise the record after
        recording a pending round (STARTING) or a failed gate (FAILED, billable).
        """
        spec = _health_spec(record)
        if spec is None or spec.is_empty:
            return None
        now = self.clock.now()
        gate = dict(record.health or {})
        since = (datetime.fromisoformat(gate["running_since"]) if gate.get("running_since")
                 else now)
        if seen.ip is None:
            results: list[ProbeResult] = []
        else:
            ports = tuple(seen.ssh_port if p == 22 and seen.ssh_port else p
                          for p in spec.tcp_ports)
            results = run_probes(seen.ip, spec.model_copy(update={"tcp_ports": ports}),
                                 clock=self.clock)
        verdict = gate_verdict(spec, results, running_since=since, now=now)
        facts["health"] = {"running_since": since.isoformat(), "verdict": verdict.value,
                           "results": [r.to_json() for r in results]}
        if verdict is GateVerdict.PASSED:
            return None
        failing = ", ".join(f"{r.name}: {r.error_kind}" for r in results if not r.ok)
        if verdict is GateVerdict.FAILED:
            return self._edge_or_drift(
                record, Event.OBSERVED_FAILED, raw_status=seen.raw_status, facts=facts,
                reason=f"health gate failed after {spec.deadline:.0f}s: "
                       f"{failing or 'no address'}", actor=actor)
        if record.state is S.CREATED or record.state is S.STOPPED:
            return self._edge_or_drift(
                record, Event.OBSERVED_STARTING, raw_status=seen.raw_status, facts=facts,
                reason=f"provider says running; waiting for probes ({failing or 'pending'})",
                actor=actor)
        return self._facts(record, facts)

    def _window(self, provider: str) -> float:
        window = self.visibility_window
        if isinstance(window, Mapping):
            return float(window.get(provider, DEFAULT_VISIBILITY_WINDOW))
        return float(window)

    def _since_accepted(self, record: InstanceRecord | TrackedInstance) -> float:
        if record.accepted_at is None:
            return float("inf")
        return (self.clock.now() - record.accepted_at).total_seconds()

    def absence_provable(self, record: InstanceRecord | TrackedInstance) -> bool:
        """Would a not-found for this row be believed now? Not inside the visibility
        window after its launch was accepted (the reconciler spends no GET there)."""
        return not self._not_yet_visible(record)

    def _not_yet_visible(self, record: InstanceRecord | TrackedInstance) -> bool:
        """A not-found now proves nothing: the launch was accepted too recently for every
        read of an eventually consistent provider to show the instance."""
        return self._since_accepted(record) < self._window(record.provider)

    def _just_commanded(self, record: InstanceRecord) -> bool:
        """Inside ``command_grace`` of our own command, or of the launch's acceptance."""
        if self._since_accepted(record) < self.command_grace:
            return True
        return (_KIND[record.entered_by] is EdgeKind.COMMAND
                and (self.clock.now() - record.state_entered_at).total_seconds()
                < self.command_grace)

    def _stale(self, record: InstanceRecord, seen: ProviderInstance) -> bool:
        """The provider still says exactly what it said before our command, inside the
        grace window: it has not acted yet. Once it has said anything else (``rebooting``
        after a restart), its next reading is news, so a quick restart is not held up."""
        return (
            seen.state is record.previous_state
            and _KIND[record.entered_by] is EdgeKind.COMMAND
            and (record.last_raw_status is None or seen.raw_status == record.last_raw_status)
            and (self.clock.now() - record.state_entered_at).total_seconds()
            < self.command_grace
        )

    def _edge_or_drift(self, record: InstanceRecord, event: Event, *, raw_status: str | None,
                       facts: dict[str, Any], reason: str | None, actor: str
                       ) -> InstanceRecord:
        if event in _EDGES.get(record.state, {}):
            return self._apply(record, event, reason=reason, raw_status=raw_status,
                               changes=facts, actor=actor)
        if raw_status is not None and raw_status == record.last_raw_status:
            return self._facts(record, facts)  # this drift is already on record
        log.info("drift on %s: %s while %s (raw %r)", record.id, event, record.state,
                 raw_status)
        self.store.record_drift(record.id, state=record.state, event=event, actor=actor,
                                at=self.clock.now(), raw_status=raw_status, reason=reason)
        return self._facts(record, facts)

    def _facts(self, record: InstanceRecord, facts: dict[str, Any]) -> InstanceRecord:
        changed = {k: v for k, v in facts.items()
                   if k != "last_seen_at" and getattr(record, k) != v}
        if not changed:
            return record
        return self.store.update(record.id, expected_version=record.version,
                                 at=self.clock.now(), changes=facts)


class _Held:
    """Context manager over an instance lock that keeps the weak-dict entry alive."""

    __slots__ = ("_holder",)

    def __init__(self, holder: _InstanceLock) -> None:
        self._holder = holder

    def __enter__(self) -> None:
        self._holder.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._holder.lock.release()



def _surely_refused(exc: ProviderError) -> bool:
    """The launch certainly created nothing: a permanent refusal, a request that never
    left (connection refused), or a 429 (the seam retries launches on 429 for the same
    reason: the provider turned the request away before processing it)."""
    if isinstance(exc, PermanentProviderError | RateLimited):
        return True
    return isinstance(exc, TemporaryProviderError) and exc.not_sent


def _health_spec(record: InstanceRecord) -> HealthSpec | None:
    raw = record.spec.get("health")
    if not raw:
        return None
    try:
        return HealthSpec.model_validate(raw)
    except PydanticValidationError:
        log.warning("instance %s has an unreadable health spec: gate skipped", record.id)
        return None


class _NotSimple(Exception):
    """This observation needs the single path (anything but nothing or one transition)."""


@dataclass(frozen=True, slots=True)
class _Plan:
    move: Move  # the one transition to commit
    after: Any  # the row after it, of the kind given (record or tracked)
    heard: tuple[TransitionEvent, ...]  # what listeners hear once it is committed


class _Instant:
    """A clock stopped at one instant: every move of a batch carries the batch's time."""

    def __init__(self, now: datetime, clock: Clock) -> None:
        self._now = now
        self._clock = clock

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(seconds)


class _Rehearsal:
    """Runs ``Fleet._observe`` for real, against a store that only takes notes.

    Why rehearse instead of re-stating the rules: the batch path must decide exactly as
    ``observe`` does (grace, drift, the health gate, ids found by tag …), and those rules
    keep changing; a second copy of them would drift. So a shallow copy of the Fleet,
    whose ``store`` is this object, whose clock is stopped at the batch's instant, whose
    listeners are a list and whose health gate only asks "are there probes?", runs
    ``_observe`` on each row. The store it sees answers one ``transition`` (kept as a
    Move, and answered with the row as the real store would return it) and nothing
    else: a second transition, an ``update``, ``record_drift`` or a read raise
    ``_NotSimple``, and that instance goes down the single path instead.

    What this relies on, and tests/test_reconcile_batch.py checks by comparing both
    paths: ``_observe`` writes only through ``self.store``, announces only through
    ``self._notify``, reads time only from ``self.clock``, and calls the provider only
    from ``_health_gate``.
    """

    def __init__(self, fleet: Fleet, now: datetime) -> None:
        self._real = fleet.store
        self._hush = _Hush()
        self._heard: list[TransitionEvent] = []
        self._row: Any = None
        self._move: Move | None = None
        shadow = copy.copy(fleet)
        shadow.store = cast(InstanceStore, self)
        shadow.clock = _Instant(now, fleet.clock)
        # instance attributes shadow the methods, on this copy only
        setattr(shadow, "_notify", self._heard.append)  # noqa: B010
        setattr(shadow, "_health_gate", self._gate)  # noqa: B010
        self._shadow = shadow

    @contextmanager
    def hushed(self) -> Iterator[None]:
        """While planning, this thread's ``gpufsm.fleet`` log lines wait for the verdict.

        A rehearsal that ends on the single path would otherwise log twice (its own
        "drift on …" or "unknown raw status" line, then the real one's).
        """
        log.addFilter(self._hush)
        try:
            yield
        finally:
            log.removeFilter(self._hush)

    def plan(self, row: Any, observation: Observation, actor: str) -> _Plan | None:
        """None when nothing is to be written; raises _NotSimple for the single path."""
        self._row, self._move = row, None
        self._heard.clear()
        self._hush.held.clear()
        self._hush.active = True
        try:
            after = self._shadow._observe(row, observation, actor)
        except AttributeError as exc:  # a TrackedInstance lacks what this needs
            raise _NotSimple(str(exc)) from None
        finally:
            self._hush.active = False
        self._hush.replay()  # decided here: its log lines are the only ones
        if self._move is None:
            return None
        return _Plan(self._move, after, tuple(self._heard))

    def transition(self, instance_id: str, *, expected_version: int,
                   from_state: InstanceState, to_state: InstanceState, event: Event,
                   kind: EdgeKind, actor: str, at: datetime, reason: str | None = None,
                   raw_status: str | None = None, changes: Mapping[str, Any] | None = None,
                   outbox: Sequence[tuple[str, dict[str, Any]]] = ()) -> Any:
        row = self._row
        if self._move is not None or instance_id != row.id or expected_version != row.version:
            raise _NotSimple("more than one transition")
        self._move = Move(instance_id, expected_version, from_state, to_state, event, kind,
                          reason, raw_status, dict(changes or {}), tuple(outbox))
        written = self._move.written(at)
        if isinstance(row, TrackedInstance):
            return row._replace(**{k: v for k, v in written.items() if k in _TRACKED})
        return row.with_changes(**written)

    def _gate(self, record: Any, seen: ProviderInstance, facts: dict[str, Any],
              actor: str) -> InstanceRecord | None:
        """Let ``observed_running`` through when no probes are configured; else single."""
        full = record if isinstance(record, InstanceRecord) else self._real.get(record.id)
        if full.version != record.version:
            raise _NotSimple("the row moved since it was read")
        spec = _health_spec(full)
        if spec is None or spec.is_empty:
            return None
        raise _NotSimple("health probes to run")

    def __getattr__(self, name: str) -> Any:
        # any other store method (update, record_drift, get …) is not a simple move
        raise _NotSimple(name)


_TRACKED = frozenset(TrackedInstance._fields)


class _Hush(logging.Filter):
    """Holds back the planning thread's records while ``active``; ``replay`` sends them."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.active = False
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.active and record.thread == self.thread:
            self.held.append(record)
            return False
        return True

    def replay(self) -> None:
        held, self.held = self.held, []
        for record in held:
            log.handle(record)
