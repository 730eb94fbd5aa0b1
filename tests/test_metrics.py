"""Prometheus metrics: transitions, API calls by outcome, and what each pass found."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from conftest import SPEC
from gpufsm import Fleet, InstanceState, SqlInstanceStore
from gpufsm.adapters import RetryPolicy, adapter_class
from gpufsm.notify import Metrics
from gpufsm.reconcile import Reconciler
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, HttpFault, make_dialect

pytest.importorskip("prometheus_client", reason="metrics are an optional extra")


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_transitions_and_passes_are_counted(fleet: Fleet, cloud: SimulatedCloud) -> None:
    metrics = Metrics()
    fleet.subscribe(metrics.on_transition)
    rec = fleet.launch(SPEC)
    fleet.wait_for(rec.id, InstanceState.RUNNING, timeout=600)
    cloud.spawn_untracked("gpufsm-orphan00000001")
    report = Reconciler(fleet).run_once()
    metrics.on_pass(report)
    assert _value(metrics, "gpufsm_transitions_total", provider="sim", from_state="STARTING",
                  to_state="RUNNING", event="observed_running") == 1
    assert _value(metrics, "gpufsm_transitions_total", provider="sim", from_state="",
                  to_state="CREATING", event="launch") == 1
    assert _value(metrics, "gpufsm_reconcile_passes_total") == 1
    assert _value(metrics, "gpufsm_orphans", provider="sim") == 1
    assert b"gpufsm_reconcile_pass_seconds_count 1.0" in metrics.render()


def test_api_calls_and_errors_by_provider(tmp_path: object) -> None:
    clock = FakeClock()
    cloud = SimulatedCloud("lambda", clock=clock)
    metrics = Metrics()
    with EmulatorServer(make_dialect("lambda", cloud), api_key="k") as server:
        adapter = adapter_class("lambda")(SecretStr("k"), base_url=server.url, clock=clock,
                                          rate_limits={}, retry=RetryPolicy(initial=0.01))
        adapter.seam.observers.append(metrics.on_call)
        store = SqlInstanceStore(f"sqlite:///{tmp_path}/m.db")
        try:
            server.inject(HttpFault("429", times=2))
            fleet = Fleet(store, [adapter], clock=clock)
            fleet.launch({"provider": "lambda", "instance_type": "gpu_1x_a10",
                          "region": "us-east-1", "ssh_key_names": ["k"]})
            report = Reconciler(fleet).run_once()
        finally:
            store.close()
            adapter.close()
    assert _value(metrics, "gpufsm_api_calls_total", provider="lambda", op="launch",
                  outcome="RateLimited") == 2
    assert _value(metrics, "gpufsm_api_calls_total", provider="lambda", op="launch",
                  outcome="ok") == 1
    assert report.api_calls == 1  # the pass listed once, nothing else
