"""The emulator's admin API (/_emulator/...) over real loopback HTTP, and `gpufsm emulator`.

A real Lambda adapter talks to the lambda dialect while an httpx client, holding no API
key, steers the same server through the admin API: the faults it queues and the clock
it moves must be what the adapter then sees.
"""

from __future__ import annotations

import io
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from gpufsm.adapters import LaunchRequest, RetryPolicy, adapter_class, ownership_tag
from gpufsm.cli import app
from gpufsm.cli._emulator import PROFILES, is_loopback, run_emulator
from gpufsm.clock import SystemClock
from gpufsm.errors import AuthError, InsufficientCapacity, ProviderUnavailable, QuotaExceeded
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import (
    DIALECTS,
    EmulatorAdmin,
    EmulatorServer,
    enable_admin,
    make_dialect,
)

S = InstanceState
KEY = "admin-test-key-7f3e"
LIST = "GET /api/v1/instances"
LAUNCH = "POST /api/v1/instance-operations/launch"
#: Plain HTTP only; one context, so each client does not reload the CA bundle (~60 ms).
TLS = ssl.create_default_context()


@dataclass
class Rig:
    clock: FakeClock
    cloud: SimulatedCloud
    server: EmulatorServer
    admin: httpx.Client  # no Authorization header: the admin API needs none
    adapter: Any

    def launch(self, token: str = "a11ce001") -> str:
        spec = InstanceSpec(provider="lambda", instance_type="gpu_1x_a10", region="us-east-1",
                            ssh_key_names=("k",))
        pid: str = self.adapter.launch(LaunchRequest(spec, ownership_tag(token), token))
        return pid

    def state(self) -> dict[str, Any]:
        response = self.admin.get("/_emulator/state")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def _lambda_cloud(clock: FakeClock | SystemClock) -> SimulatedCloud:
    profile = PROFILES["lambda"]
    return SimulatedCloud("lambda", clock=clock, seed=5, capabilities=profile.capabilities,
                          instance_types=profile.offers)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    """One socket for the module (each stop waits out the serve loop's poll); every test
    gets a fresh cloud, dialect and admin on it."""
    placeholder = _lambda_cloud(FakeClock())
    with EmulatorServer(make_dialect("lambda", placeholder), api_key=KEY) as server:
        yield server


@pytest.fixture
def rig(shared_server: EmulatorServer) -> Iterator[Rig]:
    clock = FakeClock()
    cloud = _lambda_cloud(clock)
    server = shared_server
    server.dialect = make_dialect("lambda", cloud)
    server.clear_faults()
    server.counts.clear()
    server.log.clear()
    enable_admin(server, cloud)
    adapter = adapter_class("lambda")(
        SecretStr(KEY), base_url=server.url, clock=clock, rate_limits={},
        retry=RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05),
        client=httpx.Client(verify=TLS))  # the adapter closes it
    admin = httpx.Client(base_url=server.url, timeout=5.0, verify=TLS)
    try:
        yield Rig(clock, cloud, server, admin, adapter)
    finally:
        admin.close()
        adapter.close()
        server.admin = None


# ---- state --------------------------------------------------------------------------------


def test_state_shows_instances_counts_and_clock_without_a_key(rig: Rig) -> None:
    pid = rig.launch()
    state = rig.state()
    assert state["dialect"] == "lambda"
    assert state["clock"]["fake"] is True and state["clock"]["monotonic"] == 0.0
    assert state["clock"]["now"].startswith("2026-01-01T00:00:00")
    [inst] = state["instances"]
    assert inst["id"] == pid and inst["tag"] == ownership_tag("a11ce001")
    assert inst["phase"] == inst["raw_status"] == "provisioning"
    assert inst["state"] == "CREATED" and inst["instance_type"] == "gpu_1x_a10"
    assert state["requests"] == {LAUNCH: 1} and state["requests_total"] == 1
    assert state["cloud_calls"]["launch"] == 1
    assert state["http_faults"] == [] and state["cloud_faults"] == []
    assert state["outage"] is None and state["credit_ok"] is True
    # admin calls are neither counted nor logged as provider traffic
    assert rig.server.counts == {LAUNCH: 1}
    assert all(not path.startswith("/_emulator/") for _, path, _ in rig.server.log)


def test_admin_is_only_served_when_enabled() -> None:
    cloud = _lambda_cloud(FakeClock())
    with EmulatorServer(make_dialect("lambda", cloud), api_key=KEY) as server, \
            httpx.Client(base_url=server.url, timeout=5.0, verify=TLS) as client:
        assert client.get("/_emulator/state").status_code == 401  # just a provider path
        assert server.admin is None
        admin = enable_admin(server, cloud)
        assert isinstance(admin, EmulatorAdmin) and server.admin is admin
        assert client.get("/_emulator/state").status_code == 200
        assert admin.state()["dialect"] == "lambda"


def test_unknown_admin_route_and_wrong_method(rig: Rig) -> None:
    missing = rig.admin.get("/_emulator/nope")
    assert missing.status_code == 404 and "/_emulator/state" in missing.json()["error"]
    wrong = rig.admin.delete("/_emulator/state")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"


# ---- HTTP faults --------------------------------------------------------------------------


def test_429_queued_through_admin_is_retried_by_the_adapter(rig: Rig) -> None:
    queued = rig.admin.post("/_emulator/http-faults", json={
        "kind": "429", "times": 2, "method": "get", "path_contains": "/instances",
        "retry_after": 1})
    assert queued.status_code == 201, queued.text
    assert queued.json()["queued"] == {
        "kind": "429", "times": 2, "method": "GET", "path_contains": "/instances",
        "retry_after": 1.0, "status": 503, "delay": 0.0, "after_work": False,
        "echo_key": False, "after": 0, "code": None, "message": None}
    assert [f["kind"] for f in rig.state()["http_faults"]] == ["429"]
    assert rig.adapter.list_instances() == []
    assert rig.server.counts[LIST] == 3  # two 429s, then the answer
    assert [status for _, _, status in rig.server.log] == [429, 429, 200]
    assert rig.clock.monotonic() >= 2.0  # Retry-After honoured (on the fake clock)
    assert rig.state()["http_faults"] == []


def test_http_faults_never_hit_the_admin_api_and_can_be_cleared(rig: Rig) -> None:
    assert rig.admin.post("/_emulator/http-faults",
                          json={"kind": 500, "status": 502, "times": 3}).status_code == 400
    assert rig.admin.post("/_emulator/http-faults",
                          json={"kind": "5xx", "status": 502, "times": 3}).status_code == 201
    assert rig.admin.post("/_emulator/http-faults",
                          json={"kind": "drop", "after_work": True}).status_code == 201
    listed = rig.admin.get("/_emulator/http-faults").json()["http_faults"]
    assert [(f["kind"], f["times"]) for f in listed] == [("5xx", 3), ("drop", 1)]
    assert len(rig.state()["http_faults"]) == 2  # the admin API itself is never faulted
    cleared = rig.admin.delete("/_emulator/http-faults")
    assert cleared.json() == {"cleared": 2}
    assert rig.adapter.list_instances() == []
    assert rig.server.counts[LIST] == 1


def test_a_bare_404_through_admin_is_an_unknown_outcome_not_gone(rig: Rig) -> None:
    pid = rig.launch()
    assert rig.admin.post("/_emulator/http-faults", json={
        "kind": "404", "times": 9, "method": "GET",
        "path_contains": "/instances/"}).status_code == 201
    with pytest.raises(ProviderUnavailable, match="wrong base_url or a proxy"):
        rig.adapter.get(pid)
    assert {status for _, _, status in rig.server.log if status != 200} == {404}


def test_a_key_echoed_through_admin_never_reaches_the_caller(rig: Rig) -> None:
    """The fault really echoes (a raw client sees the key), and the adapter scrubs it."""
    for kind in ("401", "5xx"):
        assert rig.admin.post("/_emulator/http-faults", json={
            "kind": kind, "echo_key": True, "path_contains": "/api/v1/instances"}
        ).status_code == 201
        raw = httpx.get(f"{rig.server.url}/api/v1/instances", verify=TLS,
                        headers={"Authorization": f"Bearer {KEY}"})
        assert KEY in raw.text
    rig.admin.post("/_emulator/http-faults", json={
        "kind": "401", "echo_key": True, "path_contains": "/api/v1/instances"})
    with pytest.raises(AuthError) as refused:
        rig.adapter.list_instances()
    assert KEY not in str(refused.value) and "**********" in str(refused.value)


def test_after_lets_the_first_matching_requests_through(rig: Rig) -> None:
    rig.admin.post("/_emulator/http-faults", json={
        "kind": "5xx", "after": 1, "times": 9, "path_contains": "/api/v1/instances"})
    assert rig.adapter.list_instances() == []  # the first one passes
    with pytest.raises(ProviderUnavailable):
        rig.adapter.list_instances()


# ---- cloud faults -------------------------------------------------------------------------


def test_read_lag_through_admin_hides_a_new_instance_for_a_while(rig: Rig) -> None:
    lagged = rig.admin.post("/_emulator/cloud-faults",
                            json={"action": "lag_reads", "seconds": 5})
    assert lagged.json() == {"action": "lag_reads", "seconds": 5.0}
    pid = rig.launch()
    assert rig.adapter.get(pid) is None  # Lambda's own not-found, as right after a launch
    assert rig.adapter.list_instances() == []
    rig.admin.post("/_emulator/clock", json={"advance": 5})
    assert rig.adapter.get(pid) is not None
    assert [i.provider_instance_id for i in rig.adapter.list_instances()] == [pid]
    rig.admin.post("/_emulator/cloud-faults", json={"action": "lag_reads", "seconds": 0})
    assert rig.cloud.read_lag == 0.0


def test_an_instance_made_in_the_console_through_admin(rig: Rig) -> None:
    made = rig.admin.post("/_emulator/cloud-faults", json={
        "action": "spawn_untracked", "name": "my-notebook"})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["name"] == "my-notebook" and body["tag"] is None
    assert body["instance_type"] == "gpu_1x_a10" and body["provider_id"] == body["id"]
    crashed = rig.admin.post("/_emulator/cloud-faults", json={
        "action": "spawn_untracked", "tag": ownership_tag("feed0001"),
        "region": "us-east-1"}).json()
    listed = {i.provider_instance_id: i for i in rig.adapter.list_instances()}
    assert listed[body["id"]].tag is None and listed[body["id"]].name == "my-notebook"
    assert listed[crashed["id"]].tag == ownership_tag("feed0001")
    assert rig.cloud.calls["launch"] == 0  # not a launch: nothing of ours asked for it


def test_spawned_instances_answer_with_the_id_the_dialect_shows() -> None:
    cloud = SimulatedCloud("vastai", clock=FakeClock(), seed=1)
    server = EmulatorServer(make_dialect("vastai", cloud), api_key=KEY)
    enable_admin(server, cloud)
    with server, httpx.Client(base_url=server.url, timeout=5.0, verify=TLS) as client:
        body = client.post("/_emulator/cloud-faults", json={"action": "spawn_untracked"}).json()
        adapter = adapter_class("vastai")(SecretStr(KEY), base_url=server.url,
                                          clock=FakeClock(), rate_limits={})
        with adapter:
            seen = adapter.get(body["provider_id"])
    assert body["provider_id"].isdigit() and body["provider_id"] != body["id"]
    assert seen is not None and seen.tag is None


def test_an_empty_outage_through_admin_is_an_empty_listing(rig: Rig) -> None:
    rig.launch()
    out = rig.admin.post("/_emulator/cloud-faults",
                         json={"action": "outage", "listings": 1, "mode": "empty"})
    assert out.json() == {"action": "outage", "listings": 1, "mode": "empty"}
    assert rig.adapter.list_instances() == []  # the lie of a deprecated endpoint
    assert len(rig.adapter.list_instances()) == 1


def test_kill_through_admin_makes_get_report_failed(rig: Rig) -> None:
    pid = rig.launch()
    settled = rig.admin.post("/_emulator/settle")
    assert settled.status_code == 200 and settled.json()["advanced"] == 3600.0
    assert [i["phase"] for i in settled.json()["instances"]] == ["running"]
    assert rig.adapter.get(pid).state is S.RUNNING
    killed = rig.admin.post("/_emulator/cloud-faults", json={"action": "kill", "id": pid})
    assert killed.status_code == 200
    assert killed.json() == {"action": "kill", "id": pid, "raw_status": "unhealthy"}
    seen = rig.adapter.get(pid)
    assert seen.state is S.FAILED and seen.raw_status == "unhealthy"


def test_outage_through_admin_makes_listing_raise_until_cleared(rig: Rig) -> None:
    rig.launch()
    out = rig.admin.post("/_emulator/cloud-faults",
                         json={"action": "outage", "listings": 5})
    assert out.json() == {"action": "outage", "listings": 5, "mode": "error"}
    assert rig.state()["outage"] == {"listings": 5, "mode": "error"}
    with pytest.raises(ProviderUnavailable):
        rig.adapter.list_instances()
    assert rig.server.counts[LIST] == 3  # every attempt failed
    assert rig.admin.post("/_emulator/cloud-faults", json={"action": "clear"}).status_code == 200
    assert len(rig.adapter.list_instances()) == 1


def test_fail_next_credit_and_raw_status_through_admin(rig: Rig) -> None:
    assert rig.admin.post("/_emulator/cloud-faults", json={
        "action": "fail_next", "op": "launch", "error": "capacity"}).status_code == 200
    assert rig.state()["cloud_faults"] == [
        {"op": "launch", "error": "capacity", "times": 1, "after_work": False}]
    with pytest.raises(InsufficientCapacity):
        rig.launch()
    pid = rig.launch()
    assert rig.admin.post("/_emulator/cloud-faults", json={
        "action": "set_raw_status", "id": pid, "raw_status": "melting"}).status_code == 200
    seen = rig.adapter.get(pid)
    assert seen.raw_status == "melting" and seen.state is None  # unknown, never a guess
    assert rig.admin.post("/_emulator/cloud-faults",
                          json={"action": "credit", "ok": False}).status_code == 200
    assert rig.cloud.credit_ok is False and rig.state()["credit_ok"] is False
    assert rig.admin.post("/_emulator/cloud-faults",
                          json={"action": "vanish", "id": pid}).status_code == 200
    assert rig.adapter.get(pid) is None


def _regions(rig: Rig, instance_type: str) -> tuple[str, ...]:
    [offer] = [o for o in rig.adapter.instance_types() if o.name == instance_type]
    return offer.regions


def test_sell_out_and_restock_through_admin(rig: Rig) -> None:
    """Issue 13: a region sold out through the admin API leaves Lambda's catalog answer
    and a launch there gets Lambda's own capacity error; a whole type, then the whole
    provider, likewise; restock brings them back."""
    assert _regions(rig, "gpu_1x_a10") == ("us-east-1", "us-west-1")
    sold = rig.admin.post("/_emulator/cloud-faults", json={
        "action": "sell_out", "instance_type": "gpu_1x_a10", "region": "us-east-1"})
    assert sold.status_code == 200, sold.text
    assert sold.json()["sold_out"] == [{"instance_type": "gpu_1x_a10", "region": "us-east-1"}]
    assert rig.state()["sold_out"] == sold.json()["sold_out"]
    assert _regions(rig, "gpu_1x_a10") == ("us-west-1",)
    with pytest.raises(InsufficientCapacity):
        rig.launch()  # us-east-1
    assert rig.server.log[-1][2] == 400 and rig.cloud.live_instances() == []
    assert rig.admin.post("/_emulator/cloud-faults",
                          json={"action": "sell_out"}).status_code == 200  # everything
    assert all(not o.regions for o in rig.adapter.instance_types())
    restocked = rig.admin.post("/_emulator/cloud-faults", json={"action": "restock"})
    assert restocked.status_code == 200 and restocked.json()["sold_out"] == []
    assert _regions(rig, "gpu_1x_a10") == ("us-east-1", "us-west-1")
    assert rig.launch() and len(rig.cloud.live_instances()) == 1


def test_quota_refusals_through_admin(rig: Rig) -> None:
    refused = rig.admin.post("/_emulator/cloud-faults", json={
        "action": "refuse_quota", "instance_type": "gpu_1x_a10"})
    assert refused.status_code == 200, refused.text
    assert rig.state()["quota_refused"] == [{"instance_type": "gpu_1x_a10", "region": None}]
    with pytest.raises(QuotaExceeded):
        rig.launch()
    assert _regions(rig, "gpu_1x_a10") == ("us-east-1", "us-west-1")  # still offered
    assert rig.admin.post("/_emulator/cloud-faults",
                          json={"action": "grant_quota"}).status_code == 200
    rig.launch()
    rig.admin.post("/_emulator/cloud-faults", json={"action": "refuse_quota"})
    assert rig.admin.post("/_emulator/cloud-faults", json={"action": "clear"}).status_code == 200
    assert rig.state()["quota_refused"] == []  # clear lifts quota refusals too
    rig.launch("a11ce002")
    assert len(rig.cloud.live_instances()) == 2


# ---- time -----------------------------------------------------------------------------------


def test_clock_advance_boots_instances(rig: Rig) -> None:
    pid = rig.launch()
    assert rig.adapter.get(pid).state in (S.CREATED, S.STARTING)
    moved = rig.admin.post("/_emulator/clock", json={"advance": 600})
    assert moved.status_code == 200 and moved.json()["monotonic"] == 600.0
    assert rig.admin.get("/_emulator/clock").json()["monotonic"] == 600.0
    assert [i["phase"] for i in rig.state()["instances"]] == ["running"]
    running = rig.adapter.get(pid)
    assert running.state is S.RUNNING and running.ip


def test_clock_cannot_move_real_time() -> None:
    cloud = _lambda_cloud(SystemClock())
    server = EmulatorServer(make_dialect("lambda", cloud))
    enable_admin(server, cloud)
    with server, httpx.Client(base_url=server.url, timeout=5.0, verify=TLS) as client:
        refused = client.post("/_emulator/clock", json={"advance": 5})
        assert refused.status_code == 409 and refused.json()["field"] == "advance"
        assert client.post("/_emulator/settle", json={"seconds": 5}).status_code == 409
        settled = client.post("/_emulator/settle")
        assert settled.status_code == 200 and settled.json()["advanced"] == 0.0
        assert settled.json()["clock"]["fake"] is False


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/_emulator/http-faults", {"kind": "teapot"}, "kind"),
    ("/_emulator/http-faults", {}, "kind"),
    ("/_emulator/http-faults", {"kind": "429", "times": 0}, "times"),
    ("/_emulator/http-faults", {"kind": "429", "times": True}, "times"),
    ("/_emulator/http-faults", {"kind": "5xx", "status": 200}, "status"),
    ("/_emulator/http-faults", {"kind": "429", "retry_after": -1}, "retry_after"),
    ("/_emulator/http-faults", {"kind": "slow"}, "delay"),
    ("/_emulator/http-faults", {"kind": "drop", "after_work": "yes"}, "after_work"),
    ("/_emulator/http-faults", {"kind": "429", "colour": "red"}, "colour"),
    ("/_emulator/http-faults", {"kind": "401", "echo_key": "yes"}, "echo_key"),
    ("/_emulator/http-faults", {"kind": "5xx", "after": -1}, "after"),
    ("/_emulator/http-faults", {"kind": "error", "status": 400}, "code"),
    ("/_emulator/http-faults", {"kind": "error", "code": "x", "status": 302}, "status"),
    ("/_emulator/http-faults", {"kind": "5xx", "code": "global/quota-exceeded"}, "code"),
    ("/_emulator/cloud-faults", {"action": "lag_reads"}, "seconds"),
    ("/_emulator/cloud-faults", {"action": "lag_reads", "seconds": -1}, "seconds"),
    ("/_emulator/cloud-faults", {"action": "spawn_untracked", "instance_type": "tpu"},
     "instance_type"),
    ("/_emulator/cloud-faults", {"action": "spawn_untracked", "region": "mars-1"}, "region"),
    ("/_emulator/cloud-faults", {"action": "spawn_untracked", "tag": 7}, "tag"),
    ("/_emulator/cloud-faults", {"action": "explode"}, "action"),
    ("/_emulator/cloud-faults", {"action": "fail_next", "op": "fly", "error": "capacity"},
     "op"),
    ("/_emulator/cloud-faults", {"action": "fail_next", "op": "launch", "error": "nope"},
     "error"),
    ("/_emulator/cloud-faults", {"action": "fail_next", "op": "launch", "error": "capacity",
                                 "after_work": True}, "after_work"),
    ("/_emulator/cloud-faults", {"action": "outage", "listings": -1}, "listings"),
    ("/_emulator/cloud-faults", {"action": "outage", "listings": 1, "mode": "lie"}, "mode"),
    ("/_emulator/cloud-faults", {"action": "kill"}, "id"),
    ("/_emulator/cloud-faults", {"action": "set_raw_status", "id": "x"}, "raw_status"),
    ("/_emulator/cloud-faults", {"action": "credit", "ok": 1}, "ok"),
    ("/_emulator/cloud-faults", {"action": "sell_out", "instance_type": "tpu"},
     "instance_type"),
    ("/_emulator/cloud-faults", {"action": "refuse_quota", "region": 7}, "region"),
    ("/_emulator/cloud-faults", {"action": "restock", "colour": "red"}, "colour"),
    ("/_emulator/clock", {}, "advance"),
    ("/_emulator/clock", {"advance": "soon"}, "advance"),
    ("/_emulator/settle", {"seconds": -5}, "seconds"),
])
def test_bad_input_is_a_400_naming_the_field(rig: Rig, path: str, body: dict[str, Any],
                                             field: str) -> None:
    response = rig.admin.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert response.json()["error"]
    assert rig.state()["http_faults"] == [] and rig.state()["cloud_faults"] == []


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"kill"'])
def test_a_body_that_is_not_a_json_object_is_a_400(rig: Rig, content: bytes) -> None:
    response = rig.admin.post("/_emulator/cloud-faults", content=content)
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_an_unknown_instance_is_a_404_naming_the_id(rig: Rig) -> None:
    response = rig.admin.post("/_emulator/cloud-faults", json={"action": "kill", "id": "nope"})
    assert response.status_code == 404 and response.json()["field"] == "id"


# ---- the command ----------------------------------------------------------------------------


class _Lines:
    """A child's stdout, line by line, with a deadline (a thread reads; select cannot see
    what a text stream has already buffered)."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()
        self.seen = ""

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put(line)
        self._lines.put(None)

    def until(self, pattern: str, deadline: float) -> re.Match[str]:
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {pattern!r} in the output:\n{self.seen}")
            self.seen += line
            found = re.search(pattern, line)
            if found:
                return found

    def rest(self) -> str:
        self._thread.join(5)
        while (line := self._lines.get_nowait() if not self._lines.empty() else None):
            self.seen += line
        return self.seen


def test_command_serves_until_sigterm_and_exits_0() -> None:
    gpufsm = Path(sys.executable).with_name("gpufsm")
    with subprocess.Popen([str(gpufsm), "emulator", "--dialect", "lambda", "--port", "0",
                           "--fake-clock", "--api-key", KEY],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            lines = _Lines(proc.stdout)
            deadline = time.monotonic() + 20
            url = lines.until(r"^url:\s+(http://127\.0\.0\.1:\d+)$", deadline).group(1)
            lines.until(r"^serving", deadline)
            assert f"base_url: {url}" in lines.seen
            assert f"admin:    {url}/_emulator/state" in lines.seen
            assert KEY not in lines.seen  # the key is never printed
            with adapter_class("lambda")(SecretStr(KEY), base_url=url, rate_limits={}) as adapter:
                assert adapter.list_instances() == []
            with httpx.Client(base_url=url, timeout=5.0, verify=TLS) as admin:
                state = admin.get("/_emulator/state").json()
            assert state["requests"] == {LIST: 1} and state["clock"]["fake"] is True
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
            out, errors = lines.rest(), proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, errors
    assert "GET /api/v1/instances -> 200" in out
    assert "stopped: 1 requests served" in out
    assert "Traceback" not in errors


def _serve_in_thread(dialect: str) -> tuple[threading.Thread, threading.Event, io.StringIO,
                                             list[int]]:
    out, err, stop, rc = io.StringIO(), io.StringIO(), threading.Event(), []
    thread = threading.Thread(target=lambda: rc.append(run_emulator(
        dialect=dialect, real_time=False, out=out, err=err, stop=stop)))
    thread.start()
    return thread, stop, out, rc


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_profile_serves_its_real_adapter(dialect: str) -> None:
    module = DIALECTS[dialect].partition(":")[0]
    pytest.importorskip(module, reason=f"the {dialect} dialect is not written yet")
    thread, stop, out, rc = _serve_in_thread(dialect)
    try:
        deadline = time.monotonic() + 10
        while "serving" not in out.getvalue() and thread.is_alive():
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.01)
        found = re.search(r"^url:\s+(\S+)$", out.getvalue(), re.MULTILINE)
        assert found, out.getvalue()
        with adapter_class(dialect)(SecretStr("any-key"), base_url=found.group(1),
                                    rate_limits={}) as adapter:
            assert adapter.list_instances() == []
            assert adapter.instance_types()  # the profile's offers, in the dialect's words
    finally:
        stop.set()
        thread.join(5)
    assert rc == [0]


def test_a_dialect_that_is_not_available_is_a_clear_error(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setitem(DIALECTS, "vastai", "gpufsm.testing.emulators.not_written:VastDialect")
    out, err = io.StringIO(), io.StringIO()
    assert run_emulator(dialect="vastai", real_time=False, out=out, err=err) == 1
    assert "the vastai emulator dialect is not available" in err.getvalue()
    assert out.getvalue() == ""


def test_a_remote_host_is_refused_unless_allowed() -> None:
    result = CliRunner().invoke(app, ["emulator", "--dialect", "lambda", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output and "--allow-remote" in result.output
    unknown = CliRunner().invoke(app, ["emulator", "--dialect", "aws"])
    assert unknown.exit_code == 2 and "known: lambda" in unknown.output
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
