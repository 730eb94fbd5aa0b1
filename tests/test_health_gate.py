"""The health gate in the engine: provider-running becomes RUNNING only when probes pass."""

from __future__ import annotations

import socket

import pytest

from conftest import SPEC
from gpufsm import Fleet, InstanceState
from gpufsm.testing import FakeClock, SimulatedCloud

S = InstanceState


@pytest.fixture
def port() -> int:
    """A free loopback port (nothing listens until a test opens it)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free: int = probe.getsockname()[1]
    probe.close()
    return free


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(8)
    return server


def gated(port: int, deadline: float = 300) -> dict[str, object]:
    return {**SPEC, "health": {"tcp_ports": [port], "attempts": 1, "timeout": 0.5,
                               "deadline": deadline}}


def test_running_waits_for_the_probes(fleet: Fleet, cloud: SimulatedCloud, port: int) -> None:
    rec = fleet.launch(gated(port))
    cloud.settle(600)  # the provider says running; nothing listens yet
    held = fleet.refresh(rec.id)
    assert held.state is S.STARTING and held.last_raw_status == "running"
    assert held.health is not None and held.health["verdict"] == "pending"
    (result,) = held.health["results"]  # type: ignore[index]
    assert (result["name"], result["ok"], result["error_kind"]) == (
        f"tcp:{port}", False, "refused")
    server = listen(port)
    try:
        opened = fleet.refresh(rec.id)
    finally:
        server.close()
    assert opened.state is S.RUNNING
    assert opened.health is not None and opened.health["verdict"] == "passed"
    assert fleet.history(rec.id)[-1].event.value == "observed_running"


def test_probes_failing_past_the_deadline_fail_the_instance(
        fleet: Fleet, cloud: SimulatedCloud, clock: FakeClock, port: int) -> None:
    rec = fleet.launch(gated(port, deadline=120))
    cloud.settle(600)
    assert fleet.refresh(rec.id).state is S.STARTING
    clock.advance(121)
    failed = fleet.refresh(rec.id)
    assert (failed.state, failed.billable) == (S.FAILED, True)  # policy terminates it
    assert failed.health is not None and failed.health["verdict"] == "failed"
    reason = fleet.history(rec.id)[-1].reason or ""
    assert reason.startswith("health gate failed after 120s") and "refused" in reason


def test_wait_for_running_sees_the_gate(fleet: Fleet, port: int) -> None:
    rec = fleet.launch(gated(port))
    server = listen(port)
    try:
        assert fleet.wait_for(rec.id, S.RUNNING, timeout=900).state is S.RUNNING
    finally:
        server.close()


def test_created_goes_to_starting_while_the_gate_is_pending(fleet: Fleet,
                                                            cloud: SimulatedCloud,
                                                            port: int) -> None:
    rec = fleet.launch(gated(port))
    assert rec.state is S.CREATED
    cloud.settle(600)
    assert fleet.refresh(rec.id).state is S.STARTING
    moves = [h.event.value for h in fleet.history(rec.id)]
    assert moves == ["launch", "observed_created", "observed_starting"]


def test_no_probes_means_running_is_running(fleet: Fleet, cloud: SimulatedCloud) -> None:
    rec = fleet.launch(SPEC)
    cloud.settle(600)
    after = fleet.refresh(rec.id)
    assert after.state is S.RUNNING and after.health is None


def test_bad_health_spec_is_refused_before_anything_is_written(fleet: Fleet) -> None:
    from gpufsm import ValidationError

    with pytest.raises(ValidationError) as info:
        fleet.launch({**SPEC, "health": {"tcp_ports": [70000]}})
    assert info.value.field.startswith("health.tcp_ports")
    assert fleet.list() == []
