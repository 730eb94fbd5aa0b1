"""The official ``runpod`` SDK (1.12.0) driven against ``gpufsm emulator --dialect runpod``.

runpod 1.12.0's pod functions speak RunPod's GraphQL API: ``POST {RUNPOD_API_BASE_URL}/graphql``
with the bearer key, a 401 raised as ``AuthenticationError``, any body with ``errors`` as
``QueryError(errors[0].message)``. It has no retry and no model classes: its answers are
the ``data`` dicts, so the assertions read the fields it hands back. The same emulator
serves RunPod's REST v1, and a pod made through one API must be seen by the other.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import runpod
from emulator import Emulator
from runpod.api.graphql import run_graphql_query
from runpod.error import AuthenticationError, QueryError

from conftest import KEY

A40 = "NVIDIA A40"  # the runpod profile's offers: A40 in EU-RO-1 and US-TX-3, $0.44/h
SOLD_OUT = "NVIDIA B200"
IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
CAPACITY = ("There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.")
GRAPHQL = "POST /graphql"


@pytest.fixture
def emu(runpod_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The SDK pointed at the emulator with the key the emulator checks."""
    monkeypatch.setenv("RUNPOD_API_BASE_URL", runpod_emulator.url)
    monkeypatch.setattr(runpod, "api_key", KEY)
    return runpod_emulator


def _create(name: str = "gpufsm-compat", gpu: str = A40, **extra: Any) -> dict[str, Any]:
    pod: dict[str, Any] = runpod.create_pod(name, IMAGE, gpu, **extra)
    return pod


def _rest_pods(emu: Emulator) -> list[dict[str, Any]]:
    """``GET /v1/pods`` on the same emulator (RunPod's REST API), with the standard library."""
    req = urllib.request.Request(f"{emu.url}/v1/pods",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        pods: list[dict[str, Any]] = json.loads(resp.read())
    return pods


# ---- the lifecycle ------------------------------------------------------------------------


def test_gpu_catalog(emu: Emulator) -> None:
    gpus = {g["id"]: g for g in runpod.get_gpus()}
    assert set(gpus) == {A40, "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3", SOLD_OUT}
    assert (gpus[A40]["displayName"], gpus[A40]["memoryInGb"]) == ("A40", 48)

    a40 = runpod.get_gpu(A40)
    assert (a40["id"], a40["securePrice"], a40["maxGpuCount"]) == (A40, 0.44, 8)
    assert a40["lowestPrice"] == {"minimumBidPrice": 0.22, "uninterruptablePrice": 0.44}
    # sold out everywhere: listed, but no price to be had
    assert runpod.get_gpu(SOLD_OUT)["lowestPrice"]["uninterruptablePrice"] is None
    with pytest.raises(ValueError, match="No GPU found"):
        runpod.get_gpu("NVIDIA GeForce RTX 9999")


def test_create_get_stop_resume_terminate(emu: Emulator) -> None:
    pod = _create(env={"HF_HOME": "/workspace/hf"}, ports="8888/http,22/tcp",
                  data_center_id="US-TX-3")
    pid = pod["id"]
    assert (pod["imageName"], pod["env"]) == (IMAGE, ["HF_HOME=/workspace/hf"])
    assert pod["machineId"] and pod["machine"]["podHostId"].startswith(f"{pid}-")

    # accepted, not up yet: desired RUNNING, no runtime
    [listed] = runpod.get_pods()
    assert (listed["id"], listed["name"], listed["desiredStatus"]) == (
        pid, "gpufsm-compat", "RUNNING")
    assert listed["runtime"] is None
    assert (listed["costPerHr"], listed["gpuCount"], listed["ports"]) == (
        0.44, 1, "8888/http,22/tcp")
    assert listed["machine"] == {"gpuDisplayName": "A40"}
    fresh = runpod.get_pod(pid)
    assert (fresh["desiredStatus"], fresh["runtime"], fresh["uptimeSeconds"]) == (
        "RUNNING", None, 0)
    assert fresh["lastStatusChange"].startswith("Rented by User: ")
    [inst] = emu.instances()
    assert (inst["id"], inst["region"], inst["instance_type"]) == (pid, "US-TX-3", A40)

    emu.settle(120)
    up = runpod.get_pod(pid)
    ports = {p["privatePort"]: p for p in up["runtime"]["ports"]}
    assert set(ports) == {22, 8888}
    assert (ports[22]["type"], ports[22]["isIpPublic"], ports[22]["publicPort"]) == (
        "tcp", True, 10341)
    assert ports[22]["ip"] == inst["ip"]
    assert (ports[8888]["type"], ports[8888]["isIpPublic"]) == ("http", False)
    assert up["uptimeSeconds"] > 0

    stopped = runpod.stop_pod(pid)
    assert stopped == {"id": pid, "desiredStatus": "EXITED"}
    emu.settle(60)
    down = runpod.get_pod(pid)
    assert (down["desiredStatus"], down["runtime"]) == ("EXITED", None)
    assert down["lastStatusChange"].startswith("Exited by User: ")

    resumed = runpod.resume_pod(pid, 1)
    assert (resumed["id"], resumed["desiredStatus"], resumed["imageName"]) == (
        pid, "RUNNING", IMAGE)
    assert resumed["machine"]["podHostId"] == pod["machine"]["podHostId"]
    emu.settle(60)
    again = runpod.get_pod(pid)
    assert again["desiredStatus"] == "RUNNING" and again["runtime"]["ports"]

    assert runpod.terminate_pod(pid) is None
    assert runpod.get_pod(pid)["desiredStatus"] == "TERMINATED"
    emu.settle(3600)
    assert runpod.get_pod(pid) is None  # gone: RunPod answers a null pod
    assert runpod.get_pods() == []
    assert emu.instances() == []
    served = emu.requests_served()
    assert served == {GRAPHQL: 13}  # get_gpu + 12 pod calls, nothing retried


def test_graphql_and_rest_see_the_same_pods(emu: Emulator) -> None:
    pid = _create()["id"]
    emu.settle(120)
    [rest] = _rest_pods(emu)
    [gql] = runpod.get_pods()
    assert rest["id"] == gql["id"] == pid
    assert rest["desiredStatus"] == gql["desiredStatus"] == "RUNNING"
    assert rest["costPerHr"] == gql["costPerHr"] == 0.44
    assert rest["portMappings"]["22"] == next(
        p["publicPort"] for p in gql["runtime"]["ports"] if p["privatePort"] == 22)
    runpod.stop_pod(pid)
    emu.settle(60)
    assert _rest_pods(emu)[0]["desiredStatus"] == "EXITED"


def test_status_words(emu: Emulator) -> None:
    """Kills and preemptions read as RunPod tells them; set_raw_status words verbatim."""
    killed, preempted = _create("killed")["id"], _create("preempted")["id"]
    emu.settle(120)
    emu.cloud_fault("kill", id=killed)
    emu.cloud_fault("preempt", id=preempted)
    pods = {p["id"]: p for p in runpod.get_pods()}
    assert pods[killed]["desiredStatus"] == pods[preempted]["desiredStatus"] == "EXITED"
    assert pods[killed]["lastStatusChange"].startswith("Exited by Runpod")
    assert pods[preempted]["lastStatusChange"].startswith("Interrupted by Runpod")
    assert pods[killed]["runtime"] is None

    # every word of RunPod's GraphQL PodStatus enum comes through verbatim
    for word in ("CREATED", "RUNNING", "RESTARTING", "EXITED", "PAUSED", "DEAD", "TERMINATED"):
        emu.cloud_fault("set_raw_status", id=killed, raw_status=word)
        assert runpod.get_pod(killed)["desiredStatus"] == word
    # a word outside the enum cannot be serialised: a field error, as from RunPod
    emu.cloud_fault("set_raw_status", id=killed, raw_status="ERROR")
    with pytest.raises(QueryError, match="Enum 'PodStatus' cannot represent value: 'ERROR'"):
        runpod.get_pod(killed)


# ---- errors -------------------------------------------------------------------------------


def test_refused_before_the_cloud(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong key, an unknown field, an error fault: each surfaced as the SDK raises it."""
    monkeypatch.setattr(runpod, "api_key", "not-the-key")
    with pytest.raises(AuthenticationError, match="Unauthorized request"):
        runpod.get_pods()
    monkeypatch.setattr(runpod, "api_key", KEY)
    emu.http_fault("401", path_contains="/graphql")  # the key revoked mid-run
    with pytest.raises(AuthenticationError):
        runpod.get_pods()
    assert runpod.get_pods() == []

    with pytest.raises(QueryError, match="Cannot query field 'gpuUtilization' on type 'Pod'"):
        run_graphql_query('query { pod(input: {podId: "x"}) { id gpuUtilization } }')

    emu.http_fault("error", status=400, code="BAD_USER_INPUT", message="Invalid podId",
                   path_contains="/graphql")
    with pytest.raises(QueryError) as caught:
        runpod.get_pods()
    assert caught.value.message == "Invalid podId"


def test_capacity_is_a_query_error_with_runpods_text(emu: Emulator) -> None:
    emu.cloud_fault("fail_next", op="launch", error="capacity")
    with pytest.raises(QueryError) as caught:
        _create()
    assert caught.value.message == CAPACITY
    assert "podFindAndDeployOnDemand" in (caught.value.query or "")
    with pytest.raises(QueryError, match="no longer any instances available"):
        _create(gpu=SOLD_OUT)  # listed, but no data center has one
    assert emu.instances() == []

    pid = _create()["id"]
    emu.settle(120)
    runpod.stop_pod(pid)
    emu.settle(60)
    emu.cloud_fault("fail_next", op="start", error="capacity")
    with pytest.raises(QueryError) as caught:
        runpod.resume_pod(pid, 1)
    assert caught.value.message == (
        "There are not enough free GPUs on the host machine to start this pod.")


def test_credit_quota_and_unknown_pod_are_query_errors(emu: Emulator) -> None:
    emu.cloud_fault("credit", ok=False)
    with pytest.raises(QueryError, match="balance is too low"):
        _create()
    emu.cloud_fault("credit", ok=True)
    emu.cloud_fault("fail_next", op="launch", error="quota")
    with pytest.raises(QueryError, match="spend limit"):
        _create()
    with pytest.raises(QueryError) as caught:
        runpod.stop_pod("nosuchpod00001")
    assert caught.value.message == "Pod not found."
    assert runpod.get_pod("nosuchpod00001") is None
    emu.cloud_fault("fail_next", op="list", error="unavailable")
    with pytest.raises(QueryError) as caught:
        runpod.get_pods()
    assert caught.value.message == (
        "Something went wrong. Please try again later or contact support.")


def test_5xx_and_429_are_not_retried(emu: Emulator) -> None:
    """runpod 1.12.0 has no retry and no status check but 401: a 5xx or a 429 whose body
    has no ``errors`` list is handed back as if it were data, so the pod functions fail
    on ``["data"]`` with a KeyError; Retry-After is never read. One request each."""
    emu.http_fault("5xx", status=502, path_contains="/graphql")
    with pytest.raises(KeyError, match="data"):
        runpod.get_pods()
    assert emu.requests_served()[GRAPHQL] == 1

    emu.http_fault("429", retry_after=2, path_contains="/graphql")
    with pytest.raises(KeyError, match="data"):
        runpod.get_pods()
    assert emu.requests_served()[GRAPHQL] == 2

    # the cloud's own throttling answers 429 with an error list: then a QueryError
    emu.cloud_fault("fail_next", op="list", error="rate_limit")
    with pytest.raises(QueryError, match="Too many requests"):
        runpod.get_pods()
    assert emu.requests_served()[GRAPHQL] == 3
    assert runpod.get_pods() == []
