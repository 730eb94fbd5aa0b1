"""The RunPod emulator's GraphQL endpoint (``POST /graphql``), over real loopback HTTP.

The subset is the official runpod SDK's (its own compatibility test drives the SDK in
tests/compat/runpod); here the wire is checked directly: validation as RunPod's GraphQL
server refuses, every mutation, the errors the simulated cloud's faults turn into, and one
cloud behind both APIs (a pod made over GraphQL is on GET /v1/pods and the REST adapter
reads it, and the other way round).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gpufsm.adapters import LaunchRequest, RetryPolicy, ownership_tag
from gpufsm.adapters.runpod import RunPodAdapter
from gpufsm.cli._emulator import PROFILES
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import EmulatorServer, enable_admin
from gpufsm.testing.emulators.runpod import RunPodDialect
from gpufsm.testing.emulators.runpod_graphql import GRAPHQL_MESSAGES

KEY = "graphql-test-key"
A40 = "NVIDIA A40"
TLS = ssl.create_default_context()
DEPLOY = """mutation Deploy($input: PodFindAndDeployOnDemandInput) {
  podFindAndDeployOnDemand(input: $input) { id name desiredStatus imageName env ports
    gpuCount costPerHr podType machineId machine { podHostId gpuDisplayName dataCenterId } }
}"""
POD = """query Pod($id: String!) {
  pod(input: {podId: $id}) { id desiredStatus lastStatusChange uptimeSeconds
    runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } } }
}"""


@dataclass
class Rig:
    cloud: SimulatedCloud
    server: EmulatorServer
    client: httpx.Client  # the provider APIs and the admin API, with the key

    def gql(self, query: str, status: int = 200, **variables: Any) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    def data(self, query: str, **variables: Any) -> Any:
        body = self.gql(query, **variables)
        assert "errors" not in body, body
        return body["data"]

    def error(self, query: str, status: int = 200, **variables: Any) -> dict[str, Any]:
        body = self.gql(query, status, **variables)
        [error] = body["errors"]
        assert isinstance(error, dict)
        return error

    def deploy(self, **fields: Any) -> dict[str, Any]:
        spec = {"name": "graphql-pod", "imageName": "runpod/base:0.6.2", "gpuTypeId": A40,
                "cloudType": "ALL", "startSsh": True, "gpuCount": 1, **fields}
        pod: dict[str, Any] = self.data(DEPLOY, input=spec)["podFindAndDeployOnDemand"]
        return pod

    def pod(self, pid: str) -> Any:
        return self.data(POD, id=pid)["pod"]

    def admin(self, path: str, body: dict[str, Any]) -> Any:
        response = self.client.post(f"/_emulator/{path}", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()


@pytest.fixture
def rig() -> Iterator[Rig]:
    profile = PROFILES["runpod"]
    cloud = SimulatedCloud("runpod", clock=FakeClock(), seed=4,
                           capabilities=profile.capabilities, instance_types=profile.offers,
                           id_prefix=profile.id_prefix)
    server = EmulatorServer(RunPodDialect(cloud), api_key=KEY)
    enable_admin(server, cloud)
    with server, httpx.Client(base_url=server.url, timeout=5.0, verify=TLS,
                              headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield Rig(cloud, server, client)


# ---- validation, as RunPod's server refuses ------------------------------------------------


def test_an_unknown_field_is_a_validation_error(rig: Rig) -> None:
    error = rig.error("query { myself { pods { id gpuUtilization } } }", 400)
    assert error["message"] == "Cannot query field 'gpuUtilization' on type 'Pod'."
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert error["locations"] == [{"line": 1, "column": 28}]
    body = rig.gql("query { myself { pods { id gpuUtilization } } }", 400)
    assert "data" not in body  # refused before execution: no data at all

    unknown_input = rig.error(
        'mutation { podStop(input: {podId: "x", force: true}) { id } }', 400)
    assert "force" in unknown_input["message"]
    missing = rig.error("mutation { podTerminate(input: {}) }", 400)
    assert "podId" in missing["message"]
    assert rig.cloud.calls["stop"] == rig.cloud.calls["terminate"] == 0


def test_syntax_and_envelope_errors(rig: Rig) -> None:
    syntax = rig.error("query { pod(input: {podId", 400)
    assert syntax["message"].startswith("Syntax Error")
    assert syntax["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    for body in (b"not json", b"[]", b'{"query": ""}'):
        response = rig.client.post("/graphql", content=body)
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    bad_variable = rig.error(POD, 400, id=7)
    assert bad_variable["extensions"]["code"] == "BAD_USER_INPUT"
    # GET is not an API here; the key is checked on /graphql like everywhere else
    assert rig.client.get("/graphql").status_code == 404
    unauthorized = httpx.post(f"{rig.server.url}/graphql", json={"query": "{ myself { id } }"})
    assert unauthorized.status_code == 401


# ---- one cloud behind both APIs -----------------------------------------------------------


def test_a_graphql_pod_is_on_rest_and_the_adapter_reads_it(rig: Rig) -> None:
    pod = rig.deploy(env=[{"key": "A", "value": "b"}], ports="8888/http",
                     dataCenterId="US-TX-3", containerDiskInGb=40)
    pid = pod["id"]
    assert pod == {
        "id": pid, "name": "graphql-pod", "desiredStatus": "RUNNING",
        "imageName": "runpod/base:0.6.2", "env": ["A=b"], "ports": "8888/http,22/tcp",
        "gpuCount": 1, "costPerHr": 0.44, "podType": "RESERVED",
        "machineId": pod["machineId"],
        "machine": {"podHostId": f"{pid}-{pod['machineId'][-8:]}", "gpuDisplayName": "A40",
                    "dataCenterId": "US-TX-3"}}
    [rest] = rig.client.get("/v1/pods").json()
    assert (rest["id"], rest["desiredStatus"], rest["publicIp"], rest["portMappings"]) == (
        pid, "RUNNING", "", {})
    assert (rest["image"], rest["env"], rest["ports"], rest["containerDiskInGb"]) == (
        "runpod/base:0.6.2", {"A": "b"}, ["8888/http", "22/tcp"], 40)

    with RunPodAdapter(SecretStr(KEY), base_url=rig.server.url, clock=rig.cloud.clock,
                       rate_limits={}, retry=RetryPolicy(attempts=1)) as adapter:
        seen = adapter.get(pid)
        assert seen is not None and seen.state == InstanceState.STARTING
        rig.cloud.settle(120)
        seen = adapter.get(pid)
        assert seen is not None
        assert (seen.state, seen.region, seen.ssh_port) == (
            InstanceState.RUNNING, "US-TX-3", 10341)
        up = rig.pod(pid)
        [ssh] = [p for p in up["runtime"]["ports"] if p["privatePort"] == 22]
        assert ssh == {"ip": seen.ip, "isIpPublic": True, "privatePort": 22,
                       "publicPort": 10341, "type": "tcp"}


def test_a_rest_pod_is_in_myself_pods(rig: Rig) -> None:
    with RunPodAdapter(SecretStr(KEY), base_url=rig.server.url, clock=rig.cloud.clock,
                       rate_limits={}, retry=RetryPolicy(attempts=1)) as adapter:
        spec = InstanceSpec(provider="runpod", instance_type=A40, region="EU-RO-1",
                            image="runpod/pytorch:2.4.0")
        request = LaunchRequest(spec, ownership_tag("9e0c4d21"), "9e0c4d21")
        pid = adapter.launch(request)
    query = "{ myself { pods { id name desiredStatus runtime { uptimeInSeconds } } } }"
    [pod] = rig.data(query)["myself"]["pods"]
    assert (pod["id"], pod["name"], pod["desiredStatus"], pod["runtime"]) == (
        pid, request.display_name, "RUNNING", None)
    rig.cloud.settle(120)
    [pod] = rig.data(query)["myself"]["pods"]
    assert pod["runtime"]["uptimeInSeconds"] > 0


# ---- every mutation -----------------------------------------------------------------------


def test_stop_resume_terminate(rig: Rig) -> None:
    pid = rig.deploy()["id"]
    rig.cloud.settle(120)
    assert rig.pod(pid)["runtime"] is not None

    stop = 'mutation($id: String!) { podStop(input: {podId: $id}) { id desiredStatus } }'
    assert rig.data(stop, id=pid)["podStop"] == {"id": pid, "desiredStatus": "EXITED"}
    rig.cloud.settle(60)
    stopped = rig.pod(pid)
    assert (stopped["desiredStatus"], stopped["runtime"]) == ("EXITED", None)
    assert stopped["lastStatusChange"].startswith("Exited by User: ")
    assert rig.client.get(f"/v1/pods/{pid}").json()["desiredStatus"] == "EXITED"
    # stopping a stopped pod is refused by the cloud: a GraphQL error on the field
    refused = rig.error(stop, id=pid)
    assert refused["message"] == "cannot stop an instance that is stopped"
    assert refused["path"] == ["podStop"]

    resume = """mutation($id: String!) { podResume(input: {podId: $id, gpuCount: 1}) {
      id desiredStatus gpuCount } }"""
    assert rig.data(resume, id=pid)["podResume"] == {
        "id": pid, "desiredStatus": "RUNNING", "gpuCount": 1}
    rig.cloud.settle(60)
    assert rig.pod(pid)["desiredStatus"] == "RUNNING"
    assert rig.pod(pid)["lastStatusChange"].startswith("Resumed by User: ")

    terminate = 'mutation($id: String!) { podTerminate(input: {podId: $id}) }'
    assert rig.gql(terminate, id=pid) == {"data": {"podTerminate": None}}
    assert rig.pod(pid)["desiredStatus"] == "TERMINATED"
    assert rig.gql(terminate, id=pid) == {"data": {"podTerminate": None}}  # again: a no-op
    rig.cloud.settle(3600)
    assert rig.pod(pid) is None
    assert rig.client.get(f"/v1/pods/{pid}").status_code == 404
    assert rig.cloud.calls["stop"] == 2 and rig.cloud.calls["start"] == 1


def test_mutations_on_an_unknown_pod(rig: Rig) -> None:
    for mutation in ('podStop(input: {podId: "nope"}) { id }',
                     'podResume(input: {podId: "nope", gpuCount: 1}) { id }',
                     'podTerminate(input: {podId: "nope"})'):
        error = rig.error(f"mutation {{ {mutation} }}")
        assert error["message"] == GRAPHQL_MESSAGES["not_found"] == "Pod not found."
        assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert rig.data('{ pod(input: {podId: "nope"}) { id } }') == {"pod": None}


def test_deploy_refusals(rig: Rig) -> None:
    query = DEPLOY
    base = {"name": "x", "imageName": "img", "gpuTypeId": A40}
    cases = [({"ports": "22/udp"}, "port '22/udp' is not [port number]/[http|tcp]"),
             ({"imageName": None}, "imageName or templateId is required"),
             ({"gpuTypeId": None}, "gpuTypeId is required to deploy a GPU pod"),
             ({"gpuCount": 0}, "gpuCount must be at least 1")]
    for change, message in cases:
        error = rig.error(query, input={**base, **change})
        assert (error["message"], error["extensions"]["code"]) == (message, "BAD_USER_INPUT")
    assert rig.error(query, 400, input={**base, "cloudType": "CHEAP"})["extensions"][
        "code"] == "BAD_USER_INPUT"
    # RunPod finds no machine for a GPU it does not sell, nor for a sold-out one
    for gpu in ("NVIDIA GeForce RTX 9999", "NVIDIA B200"):
        assert rig.error(query, input={**base, "gpuTypeId": gpu})["message"] == (
            GRAPHQL_MESSAGES["capacity"])
    assert rig.cloud.live_instances(ours_only=False) == []


# ---- the cloud's faults as GraphQL errors --------------------------------------------------


@pytest.mark.parametrize(("fault", "message"), [
    ({"op": "launch", "error": "capacity"},
     "There are no longer any instances available with the requested specifications. "
     "Please refresh and try again."),
    ({"op": "launch", "error": "quota"}, GRAPHQL_MESSAGES["quota"]),
    ({"op": "launch", "error": "invalid"}, "injected invalid fault"),
    ({"op": "launch", "error": "unavailable"},
     "Something went wrong. Please try again later or contact support."),
    ({"op": "launch", "error": "timeout"}, GRAPHQL_MESSAGES["internal"]),
])
def test_launch_faults(rig: Rig, fault: dict[str, Any], message: str) -> None:
    rig.admin("cloud-faults", {"action": "fail_next", **fault})
    body = rig.gql(DEPLOY, input={"name": "x", "imageName": "img", "gpuTypeId": A40})
    assert body["data"] == {"podFindAndDeployOnDemand": None}
    [error] = body["errors"]
    assert (error["message"], error["path"]) == (message, ["podFindAndDeployOnDemand"])


def test_credit_resume_capacity_and_rate_limit(rig: Rig) -> None:
    rig.admin("cloud-faults", {"action": "credit", "ok": False})
    error = rig.error(DEPLOY, input={"name": "x", "imageName": "img", "gpuTypeId": A40})
    assert error["message"] == GRAPHQL_MESSAGES["credit"]
    assert "balance is too low" in error["message"]  # the REST adapter's credit phrase
    rig.admin("cloud-faults", {"action": "credit", "ok": True})

    pid = rig.deploy()["id"]
    rig.cloud.settle(120)
    rig.data('mutation($id: String!) { podStop(input: {podId: $id}) { id } }', id=pid)
    rig.cloud.settle(60)
    rig.admin("cloud-faults", {"action": "fail_next", "op": "start", "error": "capacity"})
    error = rig.error('mutation($id: String!) { podResume(input: {podId: $id}) { id } }',
                      id=pid)
    assert error["message"] == ("There are not enough free GPUs on the host machine to "
                                "start this pod.")

    rig.admin("cloud-faults", {"action": "fail_next", "op": "list", "error": "rate_limit"})
    response = rig.client.post("/graphql", json={"query": "{ myself { pods { id } } }"})
    assert (response.status_code, response.headers["retry-after"]) == (429, "1")
    assert response.json()["errors"][0]["extensions"]["code"] == "TOO_MANY_REQUESTS"


def test_status_words_and_error_faults(rig: Rig) -> None:
    pid = rig.deploy()["id"]
    for word in ("CREATED", "RESTARTING", "PAUSED", "DEAD"):
        rig.admin("cloud-faults", {"action": "set_raw_status", "id": pid, "raw_status": word})
        assert rig.pod(pid)["desiredStatus"] == word
    rig.admin("cloud-faults", {"action": "set_raw_status", "id": pid, "raw_status": "ERROR"})
    body = rig.gql(POD, id=pid)
    assert body["data"]["pod"]["desiredStatus"] is None
    assert body["errors"][0]["path"] == ["pod", "desiredStatus"]

    # an error fault answers in the envelope of the API asked
    rig.admin("http-faults", {"kind": "error", "status": 400, "code": "BAD_USER_INPUT",
                              "message": "bad podId", "path_contains": "/graphql"})
    assert rig.error(POD, 400, id=pid) == {"message": "bad podId",
                                           "extensions": {"code": "BAD_USER_INPUT"}}
    rig.admin("http-faults", {"kind": "error", "status": 401, "code": "UnauthorizedError"})
    response = rig.client.get("/v1/pods")
    assert (response.status_code, response.json()) == (401, {"message": "Unauthorized"})
    rig.admin("http-faults", {"kind": "error", "status": 400, "code": "Invalid Pod ID."})
    response = rig.client.get("/v1/pods")
    assert response.json() == {"error": "Invalid Pod ID.", "status": 400}
    rig.admin("http-faults", {"kind": "error", "status": 409, "code": "Conflict",
                              "message": "pod is not running"})
    response = rig.client.get("/v2/catalog/gpus")
    assert response.headers["content-type"] == "application/problem+json"
    assert (response.status_code, response.json()) == (
        409, {"title": "Conflict", "status": 409, "detail": "pod is not running"})


def test_gpu_types(rig: Rig) -> None:
    query = """query($n: Int) { gpuTypes { id displayName memoryInGb securePrice
      lowestPrice(input: {gpuCount: $n}) { uninterruptablePrice minimumBidPrice stockStatus } } }"""
    gpus = {g["id"]: g for g in rig.data(query, n=1)["gpuTypes"]}
    assert list(gpus) == [A40, "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA B200"]
    assert gpus["NVIDIA A100 80GB PCIe"]["lowestPrice"]["minimumBidPrice"] == 0.82  # its spot
    assert gpus[A40] == {"id": A40, "displayName": "A40", "memoryInGb": 48,
                         "securePrice": 0.44,
                         "lowestPrice": {"uninterruptablePrice": 0.44,
                                         "minimumBidPrice": 0.22, "stockStatus": "High"}}
    assert gpus["NVIDIA B200"]["lowestPrice"] == {
        "uninterruptablePrice": None, "minimumBidPrice": None, "stockStatus": None}
    # more GPUs than a machine holds: no price
    assert rig.data(query, n=9)["gpuTypes"][0]["lowestPrice"]["uninterruptablePrice"] is None
    one = rig.data('{ gpuTypes(input: {id: "NVIDIA A40"}) { id } }')["gpuTypes"]
    assert one == [{"id": A40}]
    assert rig.data('{ gpuTypes(input: {id: "nope"}) { id } }') == {"gpuTypes": []}
