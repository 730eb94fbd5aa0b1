"""The RunPod adapter against its emulator over real loopback HTTP, and its mapping tables.

Request and response bodies are checked against RunPod's own OpenAPI documents (the copy
under tests/fixtures), so the emulator cannot drift from the contract unnoticed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from pydantic import SecretStr
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gpufsm.adapters import InstanceTypeOffer, LaunchRequest, RetryPolicy, ownership_tag
from gpufsm.adapters.runpod import (
    RUNPOD_ERRORS,
    RUNPOD_RATE_LIMITS,
    RUNPOD_STATUSES,
    RunPodAdapter,
    map_runpod_error,
    runpod_raw_status,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ValidationError,
)
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
    make_dialect,
)
from gpufsm.testing.emulators.runpod import RUNPOD_PHASES, RunPodDialect

KEY = "rpa_TESTKEY_0123456789abcdef"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provider-api" / "runpod"
A40 = "NVIDIA A40"
H100 = "NVIDIA H100 80GB HBM3"
B200 = "NVIDIA B200"
TYPES = (
    InstanceTypeOffer("runpod", A40, 0.44, ("EU-RO-1", "US-TX-3"), 1, "A40 (48 GB)"),
    InstanceTypeOffer("runpod", H100, 2.69, ("US-TX-3",), 1, "H100 SXM (80 GB)"),
    InstanceTypeOffer("runpod", B200, 5.99, (), 1, "B200 (180 GB)"),
)


# ---- the provider's schemas ---------------------------------------------------------------


def _openapi30(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable`` → JSON Schema's ``type: [t, "null"]``; the rest as is."""
    if isinstance(node, list):
        return [_openapi30(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi30(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    return out


def _registry() -> Registry:
    v1 = _openapi30(json.loads((FIXTURES / "openapi-rest-v1.json").read_text()))
    v2 = json.loads((FIXTURES / "openapi-v2.json").read_text())
    return Registry().with_resources([
        ("urn:runpod:v1", Resource.from_contents(v1, default_specification=DRAFT202012)),
        ("urn:runpod:v2", Resource.from_contents(v2, default_specification=DRAFT202012)),
    ])


REGISTRY = _registry()


def schema(doc: str, name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"urn:runpod:{doc}#/components/schemas/{name}"},
                                registry=REGISTRY)


def spec_enum(doc: str, *path: str) -> list[str]:
    node: Any = json.loads((FIXTURES / f"openapi-{doc}.json").read_text())
    for part in path:
        node = node[part]
    return list(node["enum"])


class SchemaCheck:
    """An emulator hook validating every exchange it can name a schema for."""

    def __init__(self) -> None:
        self.allow_unknown_status = False  # set by tests that inject undocumented words
        self.errors: list[str] = []
        self.checked: list[str] = []
        self.create_bodies: list[dict[str, Any]] = []

    def _check(self, what: str, validator: Draft202012Validator, body: Any) -> None:
        self.checked.append(what)
        self.errors += [
            f"{what}: {e.message}" for e in validator.iter_errors(body)
            if not (self.allow_unknown_status and list(e.path)[-1:] == ["desiredStatus"])
        ]

    def __call__(self, request: EmulatorRequest, response: EmulatorResponse) -> None:
        route = f"{request.method} {request.path}"
        if route == "POST /v1/pods" and request.headers.get("user-agent", "").startswith(
                "gpufsm/"):  # the adapter's bodies; raw-client probes send junk on purpose
            body = request.json()
            self.create_bodies.append(body)
            self._check("PodCreateInput", schema("v1", "PodCreateInput"), body)
        status, body = response.status, response.body
        if status == 401:
            self._check("UnauthorizedError", schema("v1", "UnauthorizedError"), body)
        elif response.content_type == "application/problem+json":
            self._check("ErrorResponse", schema("v2", "ErrorResponse"), body)
        elif status == 201 and route == "POST /v1/pods":
            self._check("Pod", schema("v1", "Pod"), body)
        elif status == 200 and route == "GET /v1/pods":
            self._check("Pods", schema("v1", "Pods"), body)
        elif status == 200 and request.method == "GET" and request.path.startswith("/v1/pods/"):
            self._check("Pod", schema("v1", "Pod"), body)
        elif status == 200 and route == "GET /v2/catalog/gpus":
            self._check("ListGpuTypesResponse", schema("v2", "ListGpuTypesResponse"), body)


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(clock: FakeClock) -> SimulatedCloud:
    return SimulatedCloud("runpod", clock=clock, seed=7, instance_types=TYPES, id_prefix="rp")


@pytest.fixture
def checks() -> SchemaCheck:
    return SchemaCheck()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    # One server for the module: stopping one costs half a second (serve_forever's poll).
    with EmulatorServer(RunPodDialect(SimulatedCloud("runpod")), api_key=KEY) as srv:
        yield srv


@pytest.fixture
def server(shared_server: EmulatorServer, cloud: SimulatedCloud,
           checks: SchemaCheck) -> Iterator[EmulatorServer]:
    """The shared server, over this test's cloud, with clean counts, faults and hooks."""
    srv = shared_server
    srv.dialect = dialect = RunPodDialect(cloud)
    srv.counts.clear()
    srv.clear_faults()
    srv.hooks[:] = [checks]
    yield srv
    srv.hooks.clear()
    srv.clear_faults()
    assert dialect.cloud is cloud
    assert checks.errors == [], checks.errors


def make_adapter(server: EmulatorServer, clock: FakeClock, key: str = KEY) -> RunPodAdapter:
    return RunPodAdapter(key, base_url=server.url, clock=clock, rate_limits={},
                         retry=RetryPolicy(attempts=3, initial=0.01, max_backoff=0.1))


@pytest.fixture
def adapter(server: EmulatorServer, clock: FakeClock) -> Iterator[RunPodAdapter]:
    with make_adapter(server, clock) as a:
        yield a


def request_for(token: str = "tok1", **fields: Any) -> LaunchRequest:
    spec: dict[str, Any] = {"provider": "runpod", "instance_type": A40,
                            "image": "runpod/pytorch:2.4.0", "name": "trainer"}
    spec.update(fields)
    return LaunchRequest(InstanceSpec(**spec), tag=ownership_tag(token), client_token=token)


def state_of(adapter: RunPodAdapter, pid: str) -> InstanceState | None:
    inst = adapter.get(pid)
    assert inst is not None
    return inst.state


# ---- lifecycle ----------------------------------------------------------------------------


def test_lifecycle_launch_run_stop_start_restart_terminate(
    adapter: RunPodAdapter, cloud: SimulatedCloud, server: EmulatorServer
) -> None:
    caps = adapter.capabilities
    assert (caps.stop, caps.restart, caps.tags) == (True, True, False)
    request = request_for()
    pid = adapter.launch(request)

    first = adapter.get(pid)
    assert first is not None
    assert first.state in (InstanceState.CREATED, InstanceState.STARTING)
    assert first.raw_status == "RUNNING:initializing"
    assert (first.tag, first.name, first.ip, first.ssh_port) == (
        request.tag, request.display_name, None, None)

    cloud.settle(120)
    up = adapter.get(pid)
    assert up is not None
    assert (up.state, up.raw_status) == (InstanceState.RUNNING, "RUNNING")
    assert up.ip == cloud.instance(pid).ip
    assert up.ssh_port == 10341
    assert (up.region, up.instance_type, up.price_per_hour) == ("EU-RO-1", A40, 0.44)

    adapter.stop(pid)
    cloud.settle(1)  # the sim's "stopping": v1 has no word for it
    assert state_of(adapter, pid) == InstanceState.STOPPED
    cloud.settle(60)
    assert state_of(adapter, pid) == InstanceState.STOPPED

    adapter.start(pid)
    cloud.settle(1)
    assert state_of(adapter, pid) == InstanceState.STARTING
    cloud.settle(60)
    assert state_of(adapter, pid) == InstanceState.RUNNING

    adapter.restart(pid)
    cloud.settle(1)
    assert state_of(adapter, pid) == InstanceState.STARTING
    cloud.settle(60)
    assert state_of(adapter, pid) == InstanceState.RUNNING

    adapter.terminate(pid)
    going = adapter.get(pid)
    assert going is not None
    assert (going.state, going.raw_status) == (InstanceState.TERMINATING, "TERMINATED:releasing")
    cloud.settle(15)
    gone = adapter.get(pid)
    assert gone is not None
    assert (gone.state, gone.raw_status) == (InstanceState.TERMINATED, "TERMINATED")
    cloud.settle(120)
    assert adapter.get(pid) is None
    adapter.terminate(pid)  # idempotent: an unknown pod is success
    assert server.counts[f"DELETE /v1/pods/{pid}"] == 2
    assert cloud.live_instances() == []


def test_list_instances_finds_ours_with_tag_and_not_others(
    adapter: RunPodAdapter, cloud: SimulatedCloud, server: EmulatorServer
) -> None:
    ours = adapter.launch(request_for("mine"))
    other = adapter.launch(request_for("x", name=None))
    cloud.rename(other, "someone's notebook")
    foreign = cloud.spawn_untracked(None, instance_type=H100)
    listed = {i.provider_instance_id: i for i in adapter.list_instances()}
    assert set(listed) == {ours, other, foreign}
    assert listed[ours].tag == ownership_tag("mine")
    assert listed[ours].name == f"{ownership_tag('mine')}/trainer"
    assert listed[other].tag is None
    assert listed[foreign].tag is None
    assert listed[foreign].instance_type == H100
    assert server.counts["GET /v1/pods"] == 1  # no pagination: one call


def test_unreadable_listing_raises_instead_of_returning_part() -> None:
    answers = iter([
        httpx.Response(200, json={"pods": []}),
        httpx.Response(200, json=[{"id": "a", "desiredStatus": "RUNNING"}, {"name": "no id"}]),
        httpx.Response(200, text="<html>oops</html>"),
    ])
    with RunPodAdapter(KEY, transport=httpx.MockTransport(lambda r: next(answers)),
                       rate_limits={}, clock=FakeClock()) as adapter:
        for _ in range(3):
            with pytest.raises(ProviderUnavailable):
                adapter.list_instances()


# ---- statuses -----------------------------------------------------------------------------

# The contract (NOTES.md): v1 desiredStatus words, v2 PodStatus words, and the composites
# this adapter documents; with the state each must map to.
V1_DESIRED_STATUS = ["RUNNING", "EXITED", "TERMINATED"]
V2_POD_STATUS = ["PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED"]
EXPECTED_STATES = {
    "RUNNING": InstanceState.RUNNING,
    "RUNNING:initializing": InstanceState.STARTING,
    "EXITED": InstanceState.STOPPED,
    "EXITED:interrupted": InstanceState.FAILED,
    "EXITED:error": InstanceState.FAILED,
    "TERMINATED": InstanceState.TERMINATED,
    "TERMINATED:releasing": InstanceState.TERMINATING,
    "PROVISIONING": InstanceState.CREATED,
    "STARTING": InstanceState.STARTING,
    "ERROR": InstanceState.FAILED,
}


@pytest.mark.parametrize("word", sorted(set(V1_DESIRED_STATUS + V2_POD_STATUS)))
def test_every_documented_status_word_maps(word: str) -> None:
    assert word in RUNPOD_STATUSES, f"{word} missing from RUNPOD_STATUSES"
    assert RUNPOD_STATUSES[word] == EXPECTED_STATES[word]


def test_status_table_is_the_documented_one_and_covers_the_specs() -> None:
    assert dict(RUNPOD_STATUSES) == EXPECTED_STATES
    assert set(spec_enum("rest-v1", "components", "schemas", "Pod", "properties",
                         "desiredStatus")) <= set(RUNPOD_STATUSES)
    assert set(spec_enum("v2", "components", "schemas", "PodStatus")) <= set(RUNPOD_STATUSES)
    assert set(V1_DESIRED_STATUS + V2_POD_STATUS) <= set(RUNPOD_STATUSES)


@pytest.mark.parametrize(("pod", "raw"), [
    ({"desiredStatus": "RUNNING", "publicIp": "1.2.3.4", "portMappings": {"22": 1}}, "RUNNING"),
    ({"desiredStatus": "RUNNING", "publicIp": "", "portMappings": {}}, "RUNNING:initializing"),
    ({"desiredStatus": "RUNNING", "publicIp": "1.2.3.4", "portMappings": None},
     "RUNNING:initializing"),
    ({"desiredStatus": "RUNNING", "publicIp": None, "portMappings": {"22": 1}},
     "RUNNING:initializing"),
    ({"desiredStatus": "EXITED", "lastStatusChange": "Exited by User: Fri Jul 12 2024"},
     "EXITED"),
    ({"desiredStatus": "EXITED"}, "EXITED"),
    ({"desiredStatus": "EXITED", "lastStatusChange": "Interrupted by Runpod: outbid"},
     "EXITED:interrupted"),
    ({"desiredStatus": "EXITED", "lastStatusChange": "Exited by Runpod: machine error"},
     "EXITED:error"),
    ({"desiredStatus": "TERMINATED", "publicIp": "", "portMappings": None}, "TERMINATED"),
    ({"desiredStatus": "TERMINATED", "publicIp": "1.2.3.4"}, "TERMINATED:releasing"),
    ({"desiredStatus": "PROVISIONING"}, "PROVISIONING"),
    ({"desiredStatus": "brand-new"}, "brand-new"),
])
def test_raw_status_composite(pod: dict[str, Any], raw: str) -> None:
    assert runpod_raw_status({"id": "p", **pod}) == raw


@pytest.mark.parametrize(("phase", "state"), [
    ("provisioning", InstanceState.STARTING),  # v1 cannot tell allocation from booting
    ("booting", InstanceState.STARTING),
    ("rebooting", InstanceState.STARTING),
    ("running", InstanceState.RUNNING),
    ("stopping", InstanceState.STOPPED),
    ("stopped", InstanceState.STOPPED),
    ("unhealthy", InstanceState.FAILED),
    ("preempted", InstanceState.FAILED),
    ("terminating", InstanceState.TERMINATING),
    ("terminated", InstanceState.TERMINATED),
])
def test_every_sim_phase_reads_as_documented(
    adapter: RunPodAdapter, cloud: SimulatedCloud, phase: str, state: InstanceState
) -> None:
    assert phase in RUNPOD_PHASES
    pid = adapter.launch(request_for())
    cloud.instance(pid).phase = phase  # pin the phase; nothing scheduled moves it
    cloud.instance(pid).epoch += 1
    assert state_of(adapter, pid) == state


def test_kill_and_preemption_read_failed_with_the_provider_text(
    adapter: RunPodAdapter, cloud: SimulatedCloud
) -> None:
    dead = adapter.launch(request_for("a"))
    spot = adapter.launch(request_for("b", options={"interruptible": True}))
    cloud.settle(120)
    cloud.kill(dead)
    cloud.preempt(spot)
    killed, preempted = adapter.get(dead), adapter.get(spot)
    assert killed is not None
    assert preempted is not None
    assert (killed.state, killed.raw_status) == (InstanceState.FAILED, "EXITED:error")
    assert killed.detail is not None
    assert "Exited by Runpod" in killed.detail
    assert (preempted.state, preempted.raw_status) == (InstanceState.FAILED,
                                                       "EXITED:interrupted")
    adapter.restart(dead)  # FAILED → restart is a legal command, and RunPod takes it
    cloud.settle(60)
    assert state_of(adapter, dead) == InstanceState.RUNNING


# ---- errors -------------------------------------------------------------------------------

# The contract: every error NOTES.md (and the v2 spec it cites) documents, plus the
# message texts RunPod is seen to send for capacity and credit. (status, body, class).
V1 = "application/json"
PROBLEM = "application/problem+json"
DOCUMENTED_ERRORS: list[tuple[int, str, Any, type[ProviderError]]] = [
    # REST v1
    (401, V1, {"message": "Unauthorized"}, AuthError),  # UnauthorizedError
    (400, V1, {"error": "Invalid input.", "status": 400}, InvalidRequest),
    (400, V1, None, InvalidRequest),  # "Invalid Pod ID." with no body
    (404, V1, {"error": "Pod not found.", "status": 404}, ProviderNotFound),
    (500, V1, {"error": "Something went wrong.", "status": 500}, ProviderUnavailable),
    (502, "text/html", "<html>Bad Gateway</html>", ProviderUnavailable),
    (503, V1, None, ProviderUnavailable),
    (504, V1, None, ProviderUnavailable),
    # v2 problem+json
    (400, PROBLEM, {"title": "Bad Request", "status": 400, "detail": "x"}, InvalidRequest),
    (401, PROBLEM, {"title": "Unauthorized", "status": 401, "detail": "missing bearer token"},
     AuthError),
    (403, PROBLEM, {"title": "Forbidden", "status": 403, "detail": "access denied"}, AuthError),
    (404, PROBLEM, {"title": "Not Found", "status": 404, "detail": "pod not found"},
     ProviderNotFound),
    (405, PROBLEM, {"title": "Method Not Allowed", "status": 405, "detail": "no"},
     InvalidRequest),
    (409, PROBLEM, {"title": "Conflict", "status": 409,
                    "detail": "action not valid for current pod status"}, InvalidRequest),
    (422, PROBLEM, {"title": "Unprocessable Entity", "status": 422,
                    "detail": "Request validation failed.",
                    "errors": ["$: additional properties 'bogus' not allowed"]}, InvalidRequest),
    (429, PROBLEM, {"title": "Too Many Requests", "status": 429,
                    "detail": "rate limit exceeded for the minute window"}, RateLimited),
    # from message text
    (400, V1, {"error": "There are no longer any instances available with the requested "
                        "specifications. Please refresh and try again.", "status": 400},
     InsufficientCapacity),
    (500, V1, {"error": "create pod: There are no instances currently available",
               "status": 500}, InsufficientCapacity),
    (400, V1, {"error": "There are not enough free GPUs on the host machine to start this "
                        "pod.", "status": 400}, InsufficientCapacity),
    (400, V1, {"error": "create pod: Insufficient balance", "status": 400}, InsufficientCredit),
    (400, V1, {"error": "insufficient funds in account", "status": 400}, InsufficientCredit),
    (400, V1, {"error": "Insufficient credit to deploy", "status": 400}, InsufficientCredit),
    (400, V1, {"error": "Not enough credit to run this pod", "status": 400},
     InsufficientCredit),
    (400, V1, {"error": "not enough funds", "status": 400}, InsufficientCredit),
    (500, V1, {"error": "Your balance is too low", "status": 500}, InsufficientCredit),
    (400, V1, {"error": "this would exceed your spend limit", "status": 400}, QuotaExceeded),
    (422, PROBLEM, {"title": "Unprocessable Entity", "status": 422,
                    "detail": "There are no longer any instances available"},
     InsufficientCapacity),
]


def _response(status: int, content_type: str, body: Any,
              headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers)
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.Response(status, content=content.encode(),
                          headers={"content-type": content_type, **(headers or {})})


@pytest.mark.parametrize(("status", "content_type", "body", "expected"), DOCUMENTED_ERRORS)
def test_every_documented_error_maps(status: int, content_type: str, body: Any,
                                     expected: type[ProviderError]) -> None:
    error = map_runpod_error(_response(status, content_type, body))
    assert type(error) is expected
    assert error.status_code == status


def test_error_table_has_no_entry_the_contract_does_not_exercise() -> None:
    hit: set[str] = set()
    for status, _content_type, body, _ in DOCUMENTED_ERRORS:
        text = json.dumps(body).lower() if body is not None else ""
        for key in RUNPOD_ERRORS:
            kind, _, value = key.partition(":")
            v1_body = (isinstance(body, dict) and isinstance(body.get("error"), str)
                       and body.get("status") == status)
            if ((kind == "message" and value in text) or (kind == "status" and value == str(
                    status)) or (kind == "title" and isinstance(body, dict)
                                 and body.get("title") == value)
                    or (kind == "v1" and v1_body and value == str(status))):
                hit.add(key)
    assert set(RUNPOD_ERRORS) == hit


@pytest.mark.parametrize(("content_type", "body"), [
    ("text/html", "<html><h1>404 Not Found</h1></html>"),  # a proxy, a wrong base_url
    (V1, None),  # an empty 404
    (V1, {"detail": "Not Found"}),  # some other framework's JSON
    (V1, {"error": "Pod not found.", "status": 400}),  # status disagrees with the answer
])
def test_a_404_in_no_runpod_shape_is_left_to_the_seam(content_type: str, body: Any) -> None:
    """Issue 9 item 5: any 404 was "pod gone". Only RunPod's own envelopes are now."""
    assert map_runpod_error(_response(404, content_type, body)) is None


def test_unknown_status_falls_back_to_the_seam() -> None:
    assert map_runpod_error(httpx.Response(418)) is None


def test_rate_limit_carries_retry_after_and_key_is_scrubbed() -> None:
    error = map_runpod_error(_response(429, PROBLEM, {"title": "Too Many Requests",
                                                      "status": 429, "detail": "slow"},
                                       {"Retry-After": "12"}))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 12
    echoed = map_runpod_error(_response(401, V1, {"message": f"bad key {KEY}"}), secret=KEY)
    assert echoed is not None
    assert KEY not in str(echoed)


def test_capacity_error_over_http(adapter: RunPodAdapter, cloud: SimulatedCloud,
                                  server: EmulatorServer) -> None:
    with pytest.raises(InsufficientCapacity):
        adapter.launch(request_for(instance_type=B200))  # offered nowhere
    cloud.fail_next("launch", "capacity")
    with pytest.raises(InsufficientCapacity):
        adapter.launch(request_for())
    with pytest.raises(InsufficientCapacity):
        adapter.launch(request_for(instance_type=H100, region="EU-RO-1"))
    assert server.counts["POST /v1/pods"] == 3  # permanent: never retried
    assert cloud.live_instances() == []


def test_credit_and_quota_errors_over_http(adapter: RunPodAdapter,
                                           cloud: SimulatedCloud) -> None:
    cloud.credit_ok = False
    with pytest.raises(InsufficientCredit):
        adapter.launch(request_for())
    cloud.credit_ok = True
    cloud.fail_next("launch", "quota")
    with pytest.raises(QuotaExceeded):
        adapter.launch(request_for())
    cloud.fail_next("launch", "invalid")
    with pytest.raises(InvalidRequest):
        adapter.launch(request_for())


def test_a_command_on_an_unknown_pod_is_runpods_not_found(adapter: RunPodAdapter) -> None:
    with pytest.raises(ProviderNotFound):
        adapter.stop("nope")


def test_delete_answering_400_is_confirmed_by_a_get(
    adapter: RunPodAdapter, cloud: SimulatedCloud, server: EmulatorServer
) -> None:
    dialect = server.dialect
    assert isinstance(dialect, RunPodDialect)
    dialect.delete_unknown_status = 400  # what v1 documents for DELETE of a bad id
    adapter.terminate("nope")
    assert server.counts["GET /v1/pods/nope"] == 1
    pid = adapter.launch(request_for())
    server.inject(HttpFault("5xx", status=400, method="DELETE"))
    with pytest.raises(InvalidRequest):
        adapter.terminate(pid)  # a 400 for a pod that exists is not success
    assert cloud.live_instances() != []


def test_invalid_state_action_is_invalid_request(adapter: RunPodAdapter) -> None:
    pid = adapter.launch(request_for())
    with pytest.raises(InvalidRequest):
        adapter.start(pid)  # it is not stopped


# ---- requests -----------------------------------------------------------------------------


def test_create_body_is_a_valid_pod_create_input(
    adapter: RunPodAdapter, checks: SchemaCheck
) -> None:
    request = request_for(
        gpu_count=2, disk_gb=80, region="US-TX-3", ports=(8888, 22), env={"A": "1"},
        command="python train.py", instance_type=H100,
        options={"cloudType": "COMMUNITY", "interruptible": True, "volumeInGb": 100,
                 "allowedCudaVersions": ["12.4"]})
    adapter.launch(request)
    assert "PodCreateInput" in checks.checked
    assert "Pod" in checks.checked
    body = checks.create_bodies[-1]
    assert body == {
        "name": request.display_name,
        "computeType": "GPU",
        "gpuTypeIds": [H100],
        "gpuCount": 2,
        "ports": ["22/tcp", "8888/tcp"],
        "imageName": "runpod/pytorch:2.4.0",
        "containerDiskInGb": 80,
        "env": {"A": "1"},
        "dataCenterIds": ["US-TX-3"],
        "dockerStartCmd": ["sh", "-c", "python train.py"],
        "cloudType": "COMMUNITY",
        "interruptible": True,
        "volumeInGb": 100,
        "allowedCudaVersions": ["12.4"],
        "supportPublicIp": True,
    }


def test_emulator_refuses_what_runpod_would(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        for body in ({"gpuTypeIds": [A40]}, {"imageName": "x", "gpuTypeIds": [A40],
                                              "bogus": 1},
                     {"imageName": "x", "gpuTypeIds": [A40], "ports": ["22"]}, [1]):
            answer = c.post("/v1/pods", json=body)
            assert answer.status_code == 400
            assert set(answer.json()) == {"error", "status"}
        assert c.get("/v2/catalog/gpus", params={"include": "AVAILABILITY"}).status_code == 400


def test_emulator_is_registered() -> None:
    assert isinstance(make_dialect("runpod", SimulatedCloud("runpod")), RunPodDialect)


# ---- spec validation ----------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({"image": None}, "image"),
    ({"name": "n" * 128}, "name"),
    ({"ssh_key_names": ("laptop",)}, "ssh_key_names"),
    ({"max_price_per_hour": 1.0}, "max_price_per_hour"),
    ({"options": {"cloudType": "CHEAP"}}, "options.cloudType"),
    ({"options": {"interruptible": "yes"}}, "options.interruptible"),
    ({"options": {"volumeInGb": True}}, "options.volumeInGb"),
    ({"options": {"volumeInGb": -1}}, "options.volumeInGb"),
    ({"options": {"dataCenterIds": ["EU-RO-1", ""]}}, "options.dataCenterIds"),
    ({"options": {"gpuTypePriority": "cheapest"}}, "options.gpuTypePriority"),
    ({"options": {"bidPerGpu": 0.2}}, "options.bidPerGpu"),
    ({"options": {"dockerStartCmd": ["x"]}, "command": "y"}, "command"),
    ({"options": {"dataCenterIds": ["EU-RO-1"]}, "region": "US-TX-3"}, "region"),
    ({"env": {"A=B": "1"}}, "env.A=B"),
])
def test_validation_names_the_field(adapter: RunPodAdapter, server: EmulatorServer,
                                    fields: dict[str, Any], field: str) -> None:
    request = request_for(**fields)
    with pytest.raises(ValidationError) as caught:
        adapter.validate(request.spec)
    assert caught.value.field == field
    with pytest.raises(ValidationError):
        adapter.launch(request)
    assert server.counts["POST /v1/pods"] == 0  # refused before any call


def test_template_may_stand_in_for_image(adapter: RunPodAdapter) -> None:
    adapter.validate(request_for(image=None, options={"templateId": "30zmvf89kd"}).spec)


def test_long_tag_is_refused_before_the_call(adapter: RunPodAdapter,
                                             server: EmulatorServer) -> None:
    with pytest.raises(ValidationError) as caught:
        adapter.launch(request_for("t" * 200))
    assert caught.value.field == "name"
    assert server.counts["POST /v1/pods"] == 0


# ---- offers, defaults, configuration ------------------------------------------------------


def test_instance_types_from_the_v2_catalog(adapter: RunPodAdapter,
                                            checks: SchemaCheck) -> None:
    offers = {o.name: o for o in adapter.instance_types()}
    assert "ListGpuTypesResponse" in checks.checked
    assert set(offers) == {A40, H100, B200}
    assert (offers[A40].price_per_hour, offers[A40].regions) == (0.44, ("EU-RO-1", "US-TX-3"))
    assert (offers[A40].gpu_description, offers[A40].gpus) == ("A40 (48 GB)", 1)
    assert not offers[B200].available
    assert offers[H100].provider == "runpod"


def test_production_hosts_and_paths() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.headers["authorization"] == f"Bearer {KEY}"
        if request.url.path == "/v2/catalog/gpus":
            return httpx.Response(200, json={"gpus": []})
        return httpx.Response(200, json=[])

    with RunPodAdapter(SecretStr(KEY), transport=httpx.MockTransport(answer),
                       clock=FakeClock()) as adapter:
        assert adapter.list_instances() == []
        assert adapter.instance_types() == []
    assert seen[0].startswith("https://rest.runpod.io/v1/pods?")
    assert seen[1].startswith("https://api.runpod.io/v2/catalog/gpus?")


def test_default_rate_limit_is_the_documented_guess() -> None:
    assert RUNPOD_RATE_LIMITS["default"].rate == 5.0
    assert RUNPOD_RATE_LIMITS["default"].burst == 5


