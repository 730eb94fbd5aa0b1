"""Listeners and webhooks: told exactly what was committed, delivered at least once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from conftest import SPEC
from gpufsm import Fleet, InstanceState, VersionConflict
from gpufsm.machines import EdgeKind, Event
from gpufsm.notify import TransitionEvent, Webhook, WebhookDispatcher, sign
from gpufsm.reconcile import Reconciler
from gpufsm.store import Move, SqlInstanceStore
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState


@dataclass
class Receiver:
    """A real HTTP endpoint on loopback that answers with a scripted status."""

    url: str
    statuses: list[int] = field(default_factory=list)  # popped per request; then 200
    received: list[tuple[dict[str, str], dict[str, Any], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec = box[0]
            rec.received.append((dict(self.headers), json.loads(body), body))
            status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()


def test_listeners_hear_every_committed_transition_in_order(fleet: Fleet) -> None:
    heard: list[TransitionEvent] = []
    unsubscribe = fleet.subscribe(heard.append)
    rec = fleet.launch(SPEC)
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    history = fleet.history(rec.id)
    assert [(e.from_state, e.to_state, e.event, e.version) for e in heard] == [
        (h.from_state, h.to_state, h.event, h.version) for h in history]
    assert heard[0].event is Event.LAUNCH and heard[0].kind is EdgeKind.COMMAND
    unsubscribe()
    fleet.terminate(rec.id)
    assert len(heard) == len(history)


def test_a_failing_listener_never_breaks_the_engine(fleet: Fleet,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: TransitionEvent) -> None:
        raise RuntimeError("listener bug")

    fleet.subscribe(broken)
    rec = fleet.launch(SPEC)
    assert rec.state is S.CREATED and "listener bug" in caplog.text


def test_outbox_rows_are_written_with_their_transition(store: SqlInstanceStore,
                                                      cloud: SimulatedCloud,
                                                      clock: FakeClock) -> None:
    hooks = [Webhook("http://127.0.0.1:1/all"),
             Webhook("http://127.0.0.1:1/ends", events=frozenset({"TERMINATED", "launch"}))]
    fleet = Fleet(store, [cloud], clock=clock, webhooks=hooks)
    rec = fleet.launch(SPEC)
    fleet.terminate(rec.id)
    fleet.wait_for(rec.id, S.TERMINATED, timeout=600)
    messages = store.outbox(rec.id)
    every = [m.payload["event"] for m in messages if m.url.endswith("/all")]
    assert every == [h.event.value for h in fleet.history(rec.id)]
    ends = [(m.payload["event"], m.payload["to"]) for m in messages if m.url.endswith("/ends")]
    assert ends == [("launch", "CREATING"), ("observed_gone", "TERMINATED")]
    assert all(m.attempts == 0 and m.delivered_at is None for m in messages)


def test_a_rolled_back_transition_announces_nothing(store: SqlInstanceStore,
                                                   cloud: SimulatedCloud,
                                                   clock: FakeClock) -> None:
    fleet = Fleet(store, [cloud], clock=clock, webhooks=[Webhook("http://127.0.0.1:1/h")])
    rec = fleet.launch(SPEC)
    before = len(store.outbox())
    with pytest.raises(VersionConflict):
        store.transition(Move(rec.id, 1, S.CREATING, S.FAILED, Event.LAUNCH_FAILED,
                              EdgeKind.OBSERVATION,
                              outbox=[("http://127.0.0.1:1/h", {"event": "launch_failed"})]),
                         actor="stale", at=clock.now())
    assert len(store.outbox()) == before


def test_dispatcher_delivers_signed_with_idempotency_keys(store: SqlInstanceStore,
                                                          cloud: SimulatedCloud,
                                                          clock: FakeClock,
                                                          receiver: Receiver) -> None:
    secret = SecretStr("whsec-test")
    hook = Webhook(receiver.url, secret=secret)
    fleet = Fleet(store, [cloud], clock=clock, webhooks=[hook])
    rec = fleet.launch(SPEC)
    dispatcher = WebhookDispatcher(store, [hook], clock=clock)
    try:
        report = dispatcher.deliver_due()
        assert (report.delivered, report.failed) == (2, 0)  # launch, observed_created
        assert dispatcher.deliver_due().delivered == 0  # nothing twice
    finally:
        dispatcher.close()
    keys = [h["Idempotency-Key"] for h, _, _ in receiver.received]
    assert keys == [f"gpufsm-{m.seq}" for m in store.outbox(rec.id)]
    headers, payload, body = receiver.received[0]
    assert headers["X-Gpufsm-Signature"] == sign(secret, body)
    assert payload["instance_id"] == rec.id and payload["event"] == "launch"
    assert "whsec-test" not in repr(hook)


def test_failed_deliveries_back_off_and_eventually_give_up(store: SqlInstanceStore,
                                                          cloud: SimulatedCloud,
                                                          clock: FakeClock,
                                                          receiver: Receiver) -> None:
    fleet = Fleet(store, [cloud], clock=clock, webhooks=[Webhook(receiver.url,
                                                                 events=frozenset({"launch"}))])
    fleet.launch(SPEC)
    receiver.statuses = [500, 503, 500]
    dispatcher = WebhookDispatcher(store, clock=clock, backoff=10, max_attempts=3)
    try:
        assert dispatcher.deliver_due().failed == 1
        assert dispatcher.deliver_due().failed == 0  # backing off: not due yet
        clock.advance(10)
        assert dispatcher.deliver_due().failed == 1
        clock.advance(19)
        assert dispatcher.deliver_due().failed == 0  # second backoff is 20 s
        clock.advance(1)
        report = dispatcher.deliver_due()
        assert report.given_up == 1 and "500" in report.errors[0]
        clock.advance(10_000)
        assert dispatcher.deliver_due().delivered == 0  # given up stays given up
    finally:
        dispatcher.close()
    (message,) = store.outbox()
    assert (message.attempts, message.next_attempt_at, message.delivered_at) == (3, None, None)
    assert len(receiver.received) == 3


def test_gone_endpoint_stops_retries_at_once(store: SqlInstanceStore, cloud: SimulatedCloud,
                                             clock: FakeClock, receiver: Receiver) -> None:
    fleet = Fleet(store, [cloud], clock=clock,
                  webhooks=[Webhook(receiver.url, events=frozenset({"launch"}))])
    fleet.launch(SPEC)
    receiver.statuses = [410]
    dispatcher = WebhookDispatcher(store, clock=clock)
    try:
        assert dispatcher.deliver_due().given_up == 1
    finally:
        dispatcher.close()


def test_two_dispatchers_never_post_the_same_message_at_once(
        store_url: str, cloud: SimulatedCloud, clock: FakeClock, receiver: Receiver) -> None:
    stores = [SqlInstanceStore(store_url, migrate=True) for _ in range(2)]
    fleet = Fleet(stores[0], [cloud], clock=clock, webhooks=[Webhook(receiver.url)])
    for _ in range(10):
        fleet.launch(SPEC)
    dispatchers = [WebhookDispatcher(s, clock=clock) for s in stores]
    barrier = threading.Barrier(2)
    results: list[int] = []

    def run(d: WebhookDispatcher) -> None:
        barrier.wait()
        results.append(d.deliver_due().delivered)

    try:
        threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for d in dispatchers:
            d.close()
        for s in stores:
            s.close()
    keys = [h["Idempotency-Key"] for h, _, _ in receiver.received]
    assert sum(results) == 20 == len(keys) == len(set(keys))


def test_reconciler_delivers_webhooks_each_pass(store: SqlInstanceStore, cloud: SimulatedCloud,
                                                clock: FakeClock, receiver: Receiver) -> None:
    hook = Webhook(receiver.url, events=frozenset({"FAILED"}))
    fleet = Fleet(store, [cloud], clock=clock, webhooks=[hook])
    rec = fleet.launch(SPEC)
    fleet.wait_for(rec.id, S.RUNNING, timeout=600)
    cloud.kill(fleet.get(rec.id).provider_instance_id or "")
    dispatcher = WebhookDispatcher(store, [hook], clock=clock)
    try:
        report = Reconciler(fleet, dispatcher=dispatcher).run_once()
    finally:
        dispatcher.close()
    assert "webhooks: delivered 1, failed 0, given up 0" in report.notes
    assert receiver.received[0][1]["to"] == "FAILED"


def test_webhook_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="http"):
        Webhook("ftp://example.invalid/hook")
