"""The engine's shared state and its one way to write a transition.

``Engine`` holds what every room of the engine reads (store, adapters, clock, guards,
actor, listeners, webhooks, windows, locks); ``Fleet`` is an Engine with the public
verbs. ``_move`` checks an event against the machine (and, for commands, the guards)
and builds the store Move plus what listeners will hear; ``_apply`` commits one. Every
transition the engine makes, command or observation, single or batched, is built here.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from gpufsm.adapters import ProviderAdapter
from gpufsm.clock import Clock, SystemClock
from gpufsm.engine._locks import Held, InstanceLocks
from gpufsm.errors import GpufsmError, ValidationError
from gpufsm.machines import TRANSITIONS, Capabilities, EdgeKind, Event, Guard, InstanceState, check
from gpufsm.notify import Listener, TransitionEvent, Webhook
from gpufsm.placement import Catalog
from gpufsm.store import InstanceRecord, InstanceStore, Move, TrackedInstance

__all__ = ["DEFAULT_VISIBILITY_WINDOW", "Engine"]

log = logging.getLogger("gpufsm.fleet")

S = InstanceState
_KIND = {t.event: t.kind for t in TRANSITIONS}

#: Seconds after a provider accepts a launch during which its reads may not show the
#: instance yet (GET answers its own not-found, listings omit it). Eventual consistency
#: after a create is documented behaviour of real clouds (SkyPilot retries visibility
#: after a create for it); two minutes is far above the seconds seen, and costs only a
#: late "gone" for a launch the provider really dropped.
DEFAULT_VISIBILITY_WINDOW = 120.0


class Engine:
    """State shared by the engine's rooms; see ``Fleet`` for what each setting means."""

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
        self._locks = InstanceLocks()
        #: Providers that refused a call for lack of credit (read by the emergency policy).
        self.credit_exhausted: set[str] = set()
        #: Every provider's offers, read at most once a minute: placement ranks them.
        self.catalog = Catalog(self.adapters, self.clock)

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

    # ---- plumbing -------------------------------------------------------------------

    def _adapter(self, provider: str) -> ProviderAdapter:
        try:
            return self.adapters[provider]
        except KeyError:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise ValidationError("provider", f"no adapter for {provider!r} (have: {known})",
                                  value=provider) from None

    def _lock(self, instance_id: str) -> Held:
        """This process's lock for one instance: one worker owns an instance at a time."""
        return self._locks(instance_id)

    def _window(self, provider: str) -> float:
        window = self.visibility_window
        if isinstance(window, int | float):  # before the Mapping ABC check: once a row
            return float(window)
        return float(window.get(provider, DEFAULT_VISIBILITY_WINDOW))

    # ---- transitions ------------------------------------------------------------------

    def _move(self, record: InstanceRecord | TrackedInstance, event: Event, *,
              at: datetime, reason: str | None = None, raw_status: str | None = None,
              changes: Mapping[str, Any] | None = None,
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

    def _apply(self, record: InstanceRecord, event: Event, *, reason: str | None = None,
               raw_status: str | None = None, changes: Mapping[str, Any] | None = None,
               adapter: ProviderAdapter | None = None, actor: str | None = None,
               ) -> InstanceRecord:
        """Fire ``event`` through the machine and commit it with its history row."""
        move, announced = self._move(record, event, at=self.clock.now(), reason=reason,
                                     raw_status=raw_status, changes=changes,
                                     adapter=adapter, actor=actor)
        after = self.store.transition(move, actor=announced.actor, at=announced.at)
        self._notify(announced)
        return after

    def _note_error(self, record: InstanceRecord, exc: BaseException) -> InstanceRecord:
        """Keep the last error on the row (best effort: a failure here is only logged)."""
        try:
            current = self.store.get(record.id)
            return self.store.update(current.id, expected_version=current.version,
                                     at=self.clock.now(),
                                     changes={"last_error": f"{type(exc).__name__}: {exc}"})
        except GpufsmError:
            log.exception("could not record the error on %s", record.id)
            return record
