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

import logging
import os
import secrets
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

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
from gpufsm.specs import InstanceSpec, parse_spec
from gpufsm.store import DriftRecord, InstanceRecord, InstanceStore, TransitionRecord

__all__ = ["Fleet", "ProgressCallback"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState
_EDGES = edges_from(TRANSITIONS)
_KIND = {t.event: t.kind for t in TRANSITIONS}
_CONFLICT_RETRIES = 3

#: Called on every poll of wait_for with the freshest record.
ProgressCallback = Callable[[InstanceRecord], None]


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
    reads as "stop undone" and a restart as "already running again".
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
    ) -> None:
        self.store = store
        self.command_grace = command_grace
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
            spec=spec.model_dump(mode="json"), created_at=now, updated_at=now,
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
                    changes={"provider_instance_id": found.provider_instance_id})
                pid = found.provider_instance_id
            try:
                adapter.terminate(pid)
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
                return record if found is None else self._adopt(record, found)
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

    def adopt(self, provider: str, found: ProviderInstance, *, reason: str) -> InstanceRecord:
        """Take an untracked instance carrying our tag into the store (an orphan).

        The row is written as a launch (so history starts where every history starts)
        and then brought to what the provider reports.
        """
        if found.tag is None:
            raise ValidationError("tag", "only instances carrying our ownership tag are adopted")
        self._adapter(provider)
        now = self.clock.now()
        token = found.tag.removeprefix("gpufsm-")
        record = InstanceRecord(
            id=str(uuid.uuid4()), provider=provider, state=S.CREATING, version=1,
            client_token=f"adopted-{token}-{secrets.token_hex(4)}", tag=found.tag,
            name=found.name, billable=True, spec={"provider": provider, "adopted": True},
            created_at=now, updated_at=now, state_entered_at=now, region=found.region,
            instance_type=found.instance_type, price_per_hour=found.price_per_hour,
            # the id goes in with the row: two daemons adopting one orphan collide on the
            # unique (provider, provider id) instead of both succeeding
            provider_instance_id=found.provider_instance_id,
        )
        self._insert(record, reason)
        with self._lock(record.id):
            return self._adopt(record, found)

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
        after = self.store.transition(
            record.id, expected_version=record.version, from_state=record.state,
            to_state=dest, event=event, kind=kind, actor=announced.actor, at=at,
            reason=reason, raw_status=raw_status, changes=values,
            outbox=self._announce(announced),
        )
        self._notify(announced)
        return after

    def _insert(self, record: InstanceRecord, reason: str | None) -> None:
        """Write a new row with its launch history row (and its webhook messages)."""
        announced = TransitionEvent(
            instance_id=record.id, provider=record.provider,
            provider_instance_id=record.provider_instance_id, name=record.name,
            tag=record.tag, from_state=None, to_state=record.state, event=Event.LAUNCH,
            kind=EdgeKind.COMMAND, actor=self.actor, version=record.version,
            at=record.created_at, billable=record.billable, reason=reason,
        )
        self.store.insert(record, actor=self.actor, reason=reason,
                          outbox=self._announce(announced))
        self._notify(announced)

    def _launch_failed(self, adapter: ProviderAdapter, record: InstanceRecord,
                       exc: ProviderError) -> InstanceRecord:
        if isinstance(exc, PermanentProviderError):
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
                               changes={"provider_instance_id": pid, "last_error": None})
        except VersionConflict:
            current = self.store.get(record.id)
            current = self.store.update(current.id, expected_version=current.version,
                                        at=self.clock.now(),
                                        changes={"provider_instance_id": pid})
            if current.state is S.TERMINATING:
                self._adapter(current.provider).terminate(pid)
            return current

    def _adopt(self, record: InstanceRecord, found: ProviderInstance) -> InstanceRecord:
        record = self._apply(record, Event.OBSERVED_CREATED,
                             reason="found by ownership tag", raw_status=found.raw_status,
                             changes={"provider_instance_id": found.provider_instance_id})
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
                return record
            return self._edge_or_drift(record, Event.OBSERVED_GONE, raw_status=None, facts={},
                                       reason=observation.reason, actor=actor)
        seen = observation.instance
        assert seen is not None
        facts: dict[str, Any] = {"last_raw_status": seen.raw_status,
                                 "last_seen_at": self.clock.now()}
        if seen.ip is not None:
            facts["ip"] = seen.ip
        if seen.price_per_hour is not None:
            facts["price_per_hour"] = seen.price_per_hour
        if record.state is S.CREATING and seen.state is not S.TERMINATED:
            record = self._apply(record, Event.OBSERVED_CREATED, raw_status=seen.raw_status,
                                 actor=actor, changes={
                                     "provider_instance_id": seen.provider_instance_id})
        if seen.state is None:
            log.warning("%s reports raw status %r for %s, which gpufsm does not know: "
                        "state left at %s", record.provider, seen.raw_status, record.id,
                        record.state)
            return self._facts(record, facts)
        if seen.state is record.state or (grace and self._stale(record, seen.state)):
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

    def _stale(self, record: InstanceRecord, seen: InstanceState) -> bool:
        """A reading of the state our own command just left, inside the grace window."""
        return (
            seen is record.previous_state
            and _KIND[record.entered_by] is EdgeKind.COMMAND
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



def _health_spec(record: InstanceRecord) -> HealthSpec | None:
    raw = record.spec.get("health")
    if not raw:
        return None
    try:
        return HealthSpec.model_validate(raw)
    except PydanticValidationError:
        log.warning("instance %s has an unreadable health spec: gate skipped", record.id)
        return None
