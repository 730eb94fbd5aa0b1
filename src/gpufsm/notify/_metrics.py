"""Prometheus metrics for the daemon: optional, and only imported when asked for.

Transitions by from/to come from a Fleet listener, API calls and errors from the HTTP
seams' observers, and pass duration, orphans and problems from each PassReport, so no
part of the engine knows metrics exist. Needs ``pip install gpufsm[metrics]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from gpufsm.notify._events import TransitionEvent

__all__ = ["Metrics", "PassFigures"]


class PassFigures(Protocol):
    """What Metrics reads from a reconcile pass (PassReport has it)."""

    duration: float
    instances_seen: int

    @property
    def changes(self) -> Iterable[Any]: ...

    @property
    def problems(self) -> Iterable[Any]: ...


class Metrics:
    """One registry of gpufsm metrics; ``serve(port)`` exposes it over HTTP."""

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("metrics need prometheus-client: pip install "
                              "'gpufsm[metrics]'") from exc
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = Counter("gpufsm_transitions_total", "Committed transitions",
                                   ["provider", "from_state", "to_state", "event"], registry=r)
        self.api_calls = Counter("gpufsm_api_calls_total", "HTTP attempts to providers",
                                 ["provider", "op", "outcome"], registry=r)
        self.pass_seconds = Histogram("gpufsm_reconcile_pass_seconds",
                                      "Duration of reconcile passes", registry=r)
        self.passes = Counter("gpufsm_reconcile_passes_total", "Reconcile passes", registry=r)
        self.watched = Gauge("gpufsm_instances_watched", "Instances in the last pass",
                             registry=r)
        self.problems = Counter("gpufsm_reconcile_problems_total", "Problems found",
                                ["kind", "provider"], registry=r)
        self.orphans = Gauge("gpufsm_orphans", "Tagged instances without a row (last pass)",
                             ["provider"], registry=r)

    def on_transition(self, event: TransitionEvent) -> None:
        """A Fleet listener."""
        self.transitions.labels(event.provider,
                                event.from_state.value if event.from_state else "",
                                event.to_state.value, event.event.value).inc()

    def on_call(self, provider: str, op: str, outcome: str) -> None:
        """An HttpSeam observer."""
        self.api_calls.labels(provider, op, outcome).inc()

    def on_pass(self, report: PassFigures) -> None:
        self.passes.inc()
        self.pass_seconds.observe(report.duration)
        self.watched.set(report.instances_seen)
        orphans: dict[str, int] = {}
        for problem in report.problems:
            self.problems.labels(problem.kind, problem.provider).inc()
            if problem.kind == "orphan":
                orphans[problem.provider] = orphans.get(problem.provider, 0) + 1
        for provider in {p.provider for p in report.problems} | set(orphans):
            self.orphans.labels(provider).set(orphans.get(provider, 0))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Expose /metrics on ``addr:port`` in a background thread; returns the server."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=addr, registry=self.registry)
