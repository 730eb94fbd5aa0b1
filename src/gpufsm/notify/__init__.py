"""Telling others about transitions: in-process listeners and webhooks via an outbox."""

from gpufsm.notify._events import Listener, TransitionEvent
from gpufsm.notify._webhooks import DeliveryReport, Webhook, WebhookDispatcher, sign

__all__ = [
    "DeliveryReport",
    "Listener",
    "TransitionEvent",
    "Webhook",
    "WebhookDispatcher",
    "sign",
]
