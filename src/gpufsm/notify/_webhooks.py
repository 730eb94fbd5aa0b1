"""Webhooks: a URL called for transitions, at least once, from the outbox.

The engine writes each message into the outbox in the transaction of its transition,
so a message exists if and only if the transition does — a crash can delay a webhook,
never lose or invent one. The dispatcher posts due messages with a timeout, an
``Idempotency-Key`` (receivers dedupe: at-least-once means duplicates are possible), an
optional HMAC-SHA256 signature, and capped exponential backoff; after ``max_attempts``
it gives up on the message and keeps the last error for inspection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
from pydantic import SecretStr

from gpufsm.clock import Clock, SystemClock
from gpufsm.notify._events import TransitionEvent
from gpufsm.store import InstanceStore, OutboxMessage

__all__ = ["DeliveryReport", "Webhook", "WebhookDispatcher", "sign"]

log = logging.getLogger("gpufsm.webhooks")


@dataclass(frozen=True)
class Webhook:
    """Where to post, for which events (None: every transition), signed with ``secret``."""

    url: str
    events: frozenset[str] | None = None  # event names or target states, e.g. "TERMINATED"
    secret: SecretStr | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s): {self.url!r}")

    def wants(self, event: TransitionEvent) -> bool:
        return self.events is None or bool(
            {event.event.value, event.to_state.value} & self.events)

    def __repr__(self) -> str:
        return f"Webhook(url={self.url!r}, events={self.events!r}, signed={bool(self.secret)})"


def sign(secret: SecretStr, body: bytes) -> str:
    """``sha256=<hex>`` over the exact body, as GitHub-style receivers expect."""
    digest = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0
    given_up: int = 0
    errors: list[str] = field(default_factory=list)


class WebhookDispatcher:
    """Deliver due outbox messages. Safe to run in several daemons at once."""

    def __init__(self, store: InstanceStore, webhooks: Iterable[Webhook] = (), *,
                 client: httpx.Client | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 10.0,
                 clock: Clock | None = None, max_attempts: int = 12, backoff: float = 5.0,
                 backoff_cap: float = 3600.0, hold: float = 60.0) -> None:
        self.store = store
        self._secrets = {w.url: w.secret for w in webhooks if w.secret is not None}
        self._owns_client = client is None
        self._client = client or httpx.Client(transport=transport, timeout=timeout)
        self._timeout = timeout
        self.clock: Clock = clock or SystemClock()
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.hold = hold

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def deliver_due(self, limit: int = 100) -> DeliveryReport:
        report = DeliveryReport()
        due: Sequence[OutboxMessage] = self.store.claim_outbox(
            now=self.clock.now(), hold=self.hold, limit=limit)
        for message in due:
            error = self._post(message)
            if error is None:
                self.store.outbox_done(message.seq, at=self.clock.now())
                report.delivered += 1
                continue
            attempts = message.attempts + 1
            give_up = attempts >= self.max_attempts or error.startswith("410")
            delay = min(self.backoff_cap, self.backoff * 2 ** (attempts - 1))
            self.store.outbox_failed(
                message.seq, error=error,
                next_attempt_at=None if give_up else self.clock.now() + timedelta(seconds=delay))
            report.errors.append(f"#{message.seq} {message.url}: {error}")
            if give_up:
                report.given_up += 1
                log.error("webhook #%d to %s given up after %d attempts: %s", message.seq,
                          message.url, attempts, error)
            else:
                report.failed += 1
        return report

    def _post(self, message: OutboxMessage) -> str | None:
        """None on success (any 2xx), else a short reason (``410 …`` stops retries)."""
        body = json.dumps({**message.payload, "delivery": message.seq},
                          separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"gpufsm-{message.seq}",
            "X-Gpufsm-Event": str(message.payload.get("event", "")),
            "User-Agent": "gpufsm-webhooks/0.1",
        }
        secret = self._secrets.get(message.url)
        if secret is not None:
            headers["X-Gpufsm-Signature"] = sign(secret, body)
        try:
            response = self._client.post(message.url, content=body, headers=headers,
                                         timeout=self._timeout)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if response.is_success:
            return None
        return f"{response.status_code} {response.reason_phrase}"
