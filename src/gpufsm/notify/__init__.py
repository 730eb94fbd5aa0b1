"""Telling others about transitions: in-process listeners and webhooks via an outbox."""

from gpufsm.notify._events import Listener, TransitionEvent
from gpufsm.notify._metrics import Metrics, PassFigures
from gpufsm.notify._webhooks import DeliveryReport, Webhook, WebhookDispatcher, sign

__all__ = [
    "DeliveryReport",
    "Listener",
    "Metrics",
    "PassFigures",
    "TransitionEvent",
    "Webhook",
    "WebhookDispatcher",
    "sign",
]
