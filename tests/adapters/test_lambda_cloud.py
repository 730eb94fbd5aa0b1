"""Lambda Cloud adapter against its loopback emulator, over real HTTP.

The contract is tests/fixtures/provider-api/lambda/ (NOTES.md, openapi-1.8.3.json,
examples/). Every request the adapter sends and every response the emulator answers is
checked against the OpenAPI document (see ``Exchanges``), so the adapter and the
emulator cannot agree with each other on a shape Lambda does not have.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import gpufsm.adapters.lambda_cloud as lambda_module
import gpufsm.testing.emulators.lambda_cloud as dialect_module
from gpufsm.adapters import (
    BatchTerminate,
    InstanceTypeOffer,
    LaunchRequest,
    ownership_tag,
)
from gpufsm.adapters.lambda_cloud import (
    LAMBDA_ERROR_PREFIXES,
    LAMBDA_ERRORS,
    LAMBDA_RATE_LIMITS,
    LAMBDA_REGIONS,
    LAMBDA_STATUSES,
    LAMBDA_TERMINATE_BATCH_MAX,
    LambdaCloudAdapter,
    LambdaInstanceEnvelope,
    LambdaInstanceListEnvelope,
    LambdaInstanceTypesEnvelope,
    LambdaLaunchEnvelope,
    LambdaRestartEnvelope,
    LambdaTerminateEnvelope,
    map_lambda_error,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InvalidRequest,
    PermanentProviderError,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    TemporaryProviderError,
    ValidationError,
)
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)
from gpufsm.testing.emulators.lambda_cloud import (
    LAMBDA_PHASE_WORDS,
    LAMBDA_REGION_CODES,
    LambdaDialect,
)

KEY = "lambda-secret-7c1f0e9a4b"
CONTRACT = Path(__file__).resolve().parents[1] / "fixtures" / "provider-api" / "lambda"
OPENAPI: dict[str, Any] = json.loads((CONTRACT / "openapi-1.8.3.json").read_text())
LAMBDA_CAPS = Capabilities(stop=False, restart=True, tags=True)
LAUNCH = "POST /api/v1/instance-operations/launch"
TERMINATE = "POST /api/v1/instance-operations/terminate"
LIST = "GET /api/v1/instances"

TYPES = (
    InstanceTypeOffer("lambda", "gpu_1x_a10", 0.75, ("us-east-1", "us-west-1"), 1,
                      "A10 (24 GB PCIe)", "1x A10 (24 GB PCIe)"),
    InstanceTypeOffer("lambda", "gpu_1x_h100_pcie", 2.49, ("us-west-3",), 1,
                      "H100 (80 GB PCIe)", "1x H100 (80 GB PCIe)"),
    InstanceTypeOffer("lambda", "gpu_8x_h100_sxm5", 23.92, (), 8, "H100 (80 GB SXM5)",
                      "8x H100 (80 GB SXM5)",
                      extra={"specs": {"vcpus": 208, "memory_gib": 1800,
                                       "storage_gib": 24780, "gpus": 8}}),
)

# ---- the contract, hard-coded from NOTES.md ----------------------------------------------

#: "Status vocabulary (InstanceStatus)" and the meaning we give each word.
NOTES_STATUSES: dict[str, InstanceState] = {
    "booting": InstanceState.STARTING,
    "active": InstanceState.RUNNING,
    "unhealthy": InstanceState.FAILED,
    "terminated": InstanceState.TERMINATED,
    "terminating": InstanceState.TERMINATING,
    "preempted": InstanceState.FAILED,
}

#: "Error codes" table (1.8.3) plus the 1.4.0 extras, with (HTTP status, our class).
NOTES_ERRORS: dict[str, tuple[int, type[ProviderError]]] = {
    "global/invalid-api-key": (401, AuthError),
    "global/account-inactive": (403, AuthError),
    "global/invalid-address": (403, AuthError),
    "global/invalid-parameters": (400, InvalidRequest),
    "global/object-does-not-exist": (404, ProviderNotFound),
    "instance-operations/launch/insufficient-capacity": (400, InsufficientCapacity),
    "instance-operations/launch/file-system-in-wrong-region": (400, InvalidRequest),
    "global/quota-exceeded": (400, QuotaExceeded),
    "global/duplicate": (400, InvalidRequest),
    "filesystems/filesystem-in-use": (400, InvalidRequest),
    "firewall-rulesets/firewall-ruleset-in-use": (400, InvalidRequest),
    "global/internal-error": (409, ProviderUnavailable),
    "global/unknown": (400, ProviderUnavailable),
    "instance-operations/launch/file-systems-not-supported": (400, InvalidRequest),
    "ssh-keys/key-in-use": (400, InvalidRequest),
}

# ---- OpenAPI validation ------------------------------------------------------------------

_REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:lambda-openapi", Resource.from_contents(OPENAPI, default_specification=DRAFT202012))
_TEMPLATES = [
    (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in OPENAPI["paths"]
]


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at ``parts`` of the OpenAPI document ($refs resolved)."""
    return Draft202012Validator({"$ref": f"urn:lambda-openapi#/{_pointer(*parts)}"},
                                registry=_REGISTRY)


def component(name: str) -> Draft202012Validator:
    return validator("components", "schemas", name)


def _template(path: str) -> str | None:
    return next((t for rx, t in _TEMPLATES if rx.match(path)), None)


def response_validator(method: str, path: str, status: int) -> Draft202012Validator | None:
    """The documented schema of this answer, or None where the spec documents none."""
    template = _template(path)
    if template is None:
        return None
    op = OPENAPI["paths"][template].get(method.lower(), {})
    content = op.get("responses", {}).get(str(status), {}).get("content", {})
    if "application/json" not in content:
        return None
    return validator("paths", template, method.lower(), "responses", str(status), "content",
                     "application/json", "schema")


def request_validator(method: str, path: str) -> Draft202012Validator | None:
    template = _template(path)
    if template is None:
        return None
    op = OPENAPI["paths"][template].get(method.lower(), {})
    if "requestBody" not in op:
        return None
    return validator("paths", template, method.lower(), "requestBody", "content",
                     "application/json", "schema")


def schema_errors(v: Draft202012Validator, instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in v.iter_errors(instance)]


@dataclass
class Exchanges:
    """Emulator hook: records traffic; ``check`` validates it against the OpenAPI spec.

    Recording only (the hook runs in the server thread, where an assertion would just
    drop the connection); the check runs in the test's teardown. ``strict=False`` for
    tests that inject status words the spec does not have.
    """

    items: list[tuple[EmulatorRequest, EmulatorResponse]] = field(default_factory=list)
    strict: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: EmulatorRequest, response: EmulatorResponse) -> None:
        with self.lock:
            self.items.append((request, response))

    def requests_to(self, key: str) -> list[Any]:
        method, path = key.split(" ", 1)
        return [r.json() for r, _ in self.items if r.method == method and r.path == path]

    def check(self) -> int:
        """Validate everything recorded; return how many bodies were checked."""
        problems: list[str] = []
        checked = 0
        for request, response in self.items:
            where = f"{request.method} {request.path} -> {response.status}"
            if 200 <= response.status < 300:
                req_v = request_validator(request.method, request.path)
                if req_v is not None:
                    checked += 1
                    problems += [f"{where} request {e}"
                                 for e in schema_errors(req_v, request.json())]
            resp_v = response_validator(request.method, request.path, response.status)
            if resp_v is None or not self.strict:
                continue
            if not isinstance(response.body, dict):
                problems.append(f"{where}: documented JSON answer, got {response.body!r}")
                continue
            checked += 1
            problems += [f"{where} response {e}"
                         for e in schema_errors(resp_v, response.body)]
        assert not problems, "\n".join(problems)
        return checked


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lambda_cloud(clock: FakeClock) -> SimulatedCloud:
    return SimulatedCloud("lambda", clock=clock, seed=7, capabilities=LAMBDA_CAPS,
                          instance_types=TYPES)


@pytest.fixture
def dialect(lambda_cloud: SimulatedCloud) -> LambdaDialect:
    return LambdaDialect(lambda_cloud)


@pytest.fixture
def exchanges() -> Exchanges:
    return Exchanges()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[EmulatorServer]:
    """One socket for the module: stopping a server waits out its 0.5 s poll, and ~100
    of those would dominate the run. Each test gets a fresh dialect and cloud."""
    placeholder = LambdaDialect(SimulatedCloud("lambda", capabilities=LAMBDA_CAPS))
    with EmulatorServer(placeholder, api_key=KEY) as srv:
        yield srv


@pytest.fixture
def server(shared_server: EmulatorServer, dialect: LambdaDialect,
           exchanges: Exchanges) -> Iterator[EmulatorServer]:
    srv = shared_server
    srv.clear_faults()
    srv.counts.clear()
    srv.log.clear()
    srv.hooks[:] = [exchanges]
    srv.dialect = dialect
    yield srv
    srv.hooks.clear()
    exchanges.check()


@pytest.fixture
def make_adapter(server: EmulatorServer, clock: FakeClock
                 ) -> Iterator[Callable[..., LambdaCloudAdapter]]:
    made: list[LambdaCloudAdapter] = []

    def make(key: str | None = KEY, **kw: Any) -> LambdaCloudAdapter:
        kw.setdefault("rate_limits", {})
        adapter = LambdaCloudAdapter(key, base_url=server.url, clock=clock, **kw)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


@pytest.fixture
def adapter(make_adapter: Callable[..., LambdaCloudAdapter]) -> LambdaCloudAdapter:
    return make_adapter()


def make_spec(**kw: Any) -> InstanceSpec:
    base: dict[str, Any] = {"provider": "lambda", "instance_type": "gpu_1x_a10",
                            "region": "us-east-1", "ssh_key_names": ("laptop",),
                            "name": "train"}
    base.update(kw)
    return InstanceSpec(**base)


def launch_request(token: str = "tok1", **kw: Any) -> LaunchRequest:
    return LaunchRequest(make_spec(**kw), ownership_tag(token), token)


def mock_adapter(handler: Callable[[httpx.Request], httpx.Response]) -> LambdaCloudAdapter:
    return LambdaCloudAdapter(KEY, transport=httpx.MockTransport(handler), rate_limits={},
                              clock=FakeClock())


def error_response(status: int, code: str, *, path: str = "/api/v1/instances",
                   method: str = "GET", **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": "m", **extra}}
    return httpx.Response(status, json=body,
                          request=httpx.Request(method, f"https://cloud.lambda.ai{path}"))


# ---- lifecycle ---------------------------------------------------------------------------


def test_lifecycle_launch_restart_terminate(adapter: LambdaCloudAdapter,
                                           lambda_cloud: SimulatedCloud,
                                           server: EmulatorServer) -> None:
    req = launch_request()
    pid = adapter.launch(req)

    seen = adapter.get(pid)
    assert seen is not None
    assert (seen.raw_status, seen.state) == ("booting", InstanceState.STARTING)
    assert seen.tag == req.tag
    assert seen.name == req.display_name == "gpufsm-tok1/train"
    assert (seen.ip, seen.ssh_port) == (None, None)
    assert lambda_cloud.instance(pid).meta["tags"] == [{"key": "gpufsm", "value": "tok1"}]

    lambda_cloud.settle(120)
    seen = adapter.get(pid)
    assert seen is not None
    assert (seen.raw_status, seen.state) == ("active", InstanceState.RUNNING)
    assert seen.ip and seen.ssh_port == 22
    assert (seen.region, seen.instance_type, seen.price_per_hour) == (
        "us-east-1", "gpu_1x_a10", 0.75)

    # Lambda has no stop/start: refused locally, no HTTP call at all.
    assert adapter.capabilities.stop is False
    sent = sum(server.counts.values())
    with pytest.raises(InvalidRequest):
        adapter.stop(pid)
    with pytest.raises(InvalidRequest):
        adapter.start(pid)
    assert sum(server.counts.values()) == sent

    adapter.restart(pid)
    lambda_cloud.settle(0.5)  # eventually consistent: the reboot shows within a moment
    seen = adapter.get(pid)
    assert seen is not None and (seen.raw_status, seen.state) == ("booting",
                                                                  InstanceState.STARTING)
    lambda_cloud.settle(120)
    seen = adapter.get(pid)
    assert seen is not None and seen.state is InstanceState.RUNNING

    adapter.terminate(pid)
    seen = adapter.get(pid)
    assert seen is not None
    assert seen.state in (InstanceState.TERMINATING, InstanceState.TERMINATED)
    lambda_cloud.settle(3600)
    assert adapter.get(pid) is None

    adapter.terminate(pid)  # idempotent: Lambda's not-found means done
    assert server.counts[TERMINATE] == 2
    assert server.log[-1] == ("POST", "/api/v1/instance-operations/terminate", 404)


def test_terminate_many_is_one_request_answered_with_the_instances(
        adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud, server: EmulatorServer,
        exchanges: Exchanges) -> None:
    """``BatchTerminate``: every id in one ``instance_ids`` body (checked against the spec
    in teardown), each answered as Lambda's ``terminated_instances`` shows it."""
    assert isinstance(adapter, BatchTerminate)
    assert adapter.terminate_batch_max == LAMBDA_TERMINATE_BATCH_MAX
    pids = [adapter.launch(launch_request(f"t{i}")) for i in range(3)]
    lambda_cloud.settle(120)
    before = adapter.seam.calls
    answered = adapter.terminate_many(pids)
    assert adapter.seam.calls - before == 1 and server.counts[TERMINATE] == 1
    assert exchanges.requests_to(TERMINATE) == [{"instance_ids": pids}]
    assert sorted(answered) == sorted(pids)
    for pid, inst in answered.items():
        assert inst.provider_instance_id == pid
        assert (inst.raw_status, inst.state) == ("terminating", InstanceState.TERMINATING)
        assert inst.tag is not None and inst.tag.startswith("gpufsm-t")
    assert {lambda_cloud.instance(p).phase for p in pids} == {"terminating"}


def test_terminate_many_with_one_unknown_id_terminates_none(
        adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud,
        server: EmulatorServer) -> None:
    """Lambda refuses the whole request (404 ``global/object-does-not-exist``): raised,
    since it cannot say which id, and nothing was terminated."""
    pids = [adapter.launch(launch_request(f"u{i}")) for i in range(2)]
    lambda_cloud.settle(120)
    with pytest.raises(ProviderNotFound):
        adapter.terminate_many([pids[0], "0920582c7ff041399e34823a0be00000", pids[1]])
    assert server.log[-1] == ("POST", "/api/v1/instance-operations/terminate", 404)
    assert {lambda_cloud.instance(p).phase for p in pids} == {"running"}


def test_terminate_many_answers_an_instance_already_on_its_way_out(
        adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud) -> None:
    """Terminating a terminating or terminated (still listed) instance again is no error:
    it is answered as it stands, and the others terminate."""
    pids = [adapter.launch(launch_request(f"w{i}")) for i in range(2)]
    lambda_cloud.settle(120)
    adapter.terminate(pids[0])
    lambda_cloud.settle(lambda_cloud.timings.terminate[1])  # terminated, still listed
    answered = adapter.terminate_many(pids)
    assert answered[pids[0]].state is InstanceState.TERMINATED
    assert answered[pids[1]].state is InstanceState.TERMINATING


def test_terminate_many_refuses_a_batch_over_the_limit_and_an_empty_one(
        adapter: LambdaCloudAdapter, server: EmulatorServer) -> None:
    for ids in ([], [f"id{i}" for i in range(LAMBDA_TERMINATE_BATCH_MAX + 1)]):
        with pytest.raises(ValueError, match="ids"):
            adapter.terminate_many(ids)
    assert sum(server.counts.values()) == 0


def test_terminate_many_keeps_only_ids_it_asked_for_and_never_reads_silence() -> None:
    """An instance in the answer that was not asked for is not ours to observe; an id
    missing from the answer is simply not there (the engine sends it alone); a 200
    whose body cannot be read is an unknown outcome, never an empty answer."""
    example = json.loads((CONTRACT / "examples" / "m_stop_response.json").read_text())
    (inst,) = example["data"]["terminated_instances"]
    stranger = dict(inst, id="not-asked-for")
    body = {"data": {"terminated_instances": [inst, stranger]}}
    with mock_adapter(lambda r: httpx.Response(200, json=body)) as adapter:
        answered = adapter.terminate_many([inst["id"], "missing-from-the-answer"])
    assert list(answered) == [inst["id"]]
    assert answered[inst["id"]].state is InstanceState.TERMINATING
    with mock_adapter(lambda r: httpx.Response(200)) as adapter, pytest.raises(
            ProviderUnavailable):
        adapter.terminate_many(["abc", "def"])


def test_list_instances_returns_ours_with_tag_and_others_without(
        adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud,
        server: EmulatorServer) -> None:
    ours = adapter.launch(launch_request("mine"))
    stranger = lambda_cloud.spawn_untracked(None)
    orphan = lambda_cloud.spawn_untracked(ownership_tag("crashed"))
    team = lambda_cloud.create_instance(instance_type="gpu_1x_a10", name="team-box",
                                        meta={"tags": [{"key": "team", "value": "ml"}]})
    legacy = lambda_cloud.create_instance(instance_type="gpu_1x_a10",
                                          name="gpufsm-old1/legacy", meta={"tags": []})
    empty_tag = lambda_cloud.create_instance(
        instance_type="gpu_1x_a10", name="x", meta={"tags": [{"key": "gpufsm", "value": ""}]})

    listing = {i.provider_instance_id: i for i in adapter.list_instances()}

    assert listing[ours].tag == "gpufsm-mine"
    assert listing[orphan].tag == "gpufsm-crashed"  # native tag: healed by the reconciler
    assert listing[legacy].tag == "gpufsm-old1"  # no native tag: the name still tells
    assert listing[stranger].tag is None
    assert listing[team].tag is None
    assert listing[empty_tag].tag is None
    assert server.counts[LIST] == 1


def test_many_instances_come_back_complete_in_one_call(adapter: LambdaCloudAdapter,
                                                       lambda_cloud: SimulatedCloud,
                                                       server: EmulatorServer) -> None:
    ids = {lambda_cloud.create_instance(instance_type="gpu_1x_a10", name=f"n{i}",
                                        tag=ownership_tag(f"t{i}")) for i in range(150)}
    listing = adapter.list_instances()
    assert {i.provider_instance_id for i in listing} == ids
    assert server.counts[LIST] == 1  # Lambda does not paginate /instances


def test_rename_keeps_ownership_through_native_tags(adapter: LambdaCloudAdapter,
                                                    server: EmulatorServer) -> None:
    req = launch_request("keep")
    pid = adapter.launch(req)
    renamed = adapter.rename(pid, "no tag in this name")
    assert renamed.name == "no tag in this name"
    assert renamed.tag == req.tag
    again = adapter.get(pid)
    assert again is not None and again.tag == req.tag

    sent = sum(server.counts.values())
    with pytest.raises(ValidationError) as info:
        adapter.rename(pid, "x" * 65)
    assert info.value.field == "name"
    assert sum(server.counts.values()) == sent
    with pytest.raises(ProviderNotFound):
        adapter.rename("no-such-instance", "n")


def test_preempted_and_unhealthy_are_failed_until_terminated(
        adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud) -> None:
    pid = adapter.launch(launch_request())
    lambda_cloud.settle(120)
    lambda_cloud.kill(pid)
    seen = adapter.get(pid)
    assert seen is not None and (seen.raw_status, seen.state) == ("unhealthy",
                                                                  InstanceState.FAILED)
    adapter.restart(pid)  # Lambda restarts an unhealthy instance
    lambda_cloud.settle(120)
    lambda_cloud.preempt(pid)
    seen = adapter.get(pid)
    assert seen is not None and (seen.raw_status, seen.state) == ("preempted",
                                                                  InstanceState.FAILED)
    lambda_cloud.settle(3600)
    assert adapter.get(pid) is None


def test_restart_refused_while_booting(adapter: LambdaCloudAdapter) -> None:
    pid = adapter.launch(launch_request())
    with pytest.raises(InvalidRequest) as info:
        adapter.restart(pid)
    assert info.value.code == "global/invalid-parameters"


def test_instance_types_have_dollar_prices_and_regions(adapter: LambdaCloudAdapter) -> None:
    offers = {o.name: o for o in adapter.instance_types()}
    assert set(offers) == {t.name for t in TYPES}
    a10 = offers["gpu_1x_a10"]
    assert (a10.provider, a10.price_per_hour, a10.regions, a10.gpus) == (
        "lambda", 0.75, ("us-east-1", "us-west-1"), 1)
    assert a10.available
    big = offers["gpu_8x_h100_sxm5"]
    assert (big.price_per_hour, big.regions, big.gpus, big.available) == (23.92, (), 8, False)
    assert big.extra["vcpus"] == 208


# ---- statuses ----------------------------------------------------------------------------


def test_status_table_covers_the_documented_vocabulary() -> None:
    spec_enum = OPENAPI["components"]["schemas"]["InstanceStatus"]["enum"]
    assert set(NOTES_STATUSES) == set(spec_enum)
    assert dict(LAMBDA_STATUSES) == NOTES_STATUSES


@pytest.mark.parametrize("word", sorted(NOTES_STATUSES))
def test_every_status_word_maps_over_http(word: str, adapter: LambdaCloudAdapter,
                                          lambda_cloud: SimulatedCloud) -> None:
    pid = adapter.launch(launch_request())
    lambda_cloud.set_raw_status(pid, word)
    seen = adapter.get(pid)
    assert seen is not None and (seen.raw_status, seen.state) == (word, NOTES_STATUSES[word])
    (listed,) = adapter.list_instances()
    assert listed.state is NOTES_STATUSES[word]


@pytest.mark.parametrize(("phase", "word"), sorted(LAMBDA_PHASE_WORDS.items()))
def test_simulator_phases_speak_lambda_words(phase: str, word: str,
                                             adapter: LambdaCloudAdapter,
                                             lambda_cloud: SimulatedCloud) -> None:
    pid = adapter.launch(launch_request())
    lambda_cloud.kill(pid, raw_status=phase)  # put the instance in that phase directly
    seen = adapter.get(pid)
    assert seen is not None and seen.raw_status == word


def test_stop_phases_cannot_leak_in_as_known_words(adapter: LambdaCloudAdapter,
                                                   lambda_cloud: SimulatedCloud,
                                                   exchanges: Exchanges) -> None:
    """A misbuilt cloud that stops instances shows an unknown word, never a guess."""
    exchanges.strict = False
    pid = adapter.launch(launch_request())
    lambda_cloud.kill(pid, raw_status="stopped")
    seen = adapter.get(pid)
    assert seen is not None and (seen.raw_status, seen.state) == ("stopped", None)


# ---- error table -------------------------------------------------------------------------


def test_error_table_is_the_documented_list() -> None:
    assert set(LAMBDA_ERRORS) == set(NOTES_ERRORS)
    for code, (_, cls) in NOTES_ERRORS.items():
        assert LAMBDA_ERRORS[code] is cls, code
    assert dict(LAMBDA_ERROR_PREFIXES) == {"provider/": ProviderUnavailable}


def test_every_spec_error_code_is_in_the_table() -> None:
    codes = {s["properties"]["code"]["const"]
             for name, s in OPENAPI["components"]["schemas"].items()
             if name.startswith("ApiError")}
    assert codes <= set(LAMBDA_ERRORS)


@pytest.mark.parametrize("code", sorted(NOTES_ERRORS))
def test_mapper_maps_each_code(code: str) -> None:
    status, cls = NOTES_ERRORS[code]
    error = map_lambda_error(error_response(status, code, suggestion="s"), "lambda")
    assert type(error) is cls
    assert error.code == code and error.status_code == status and error.provider == "lambda"


@pytest.mark.parametrize("code", ["provider/internal-unavailable", "provider/brand-new"])
def test_provider_prefix_is_upstream_and_temporary(code: str) -> None:
    error = map_lambda_error(error_response(400, code), "lambda")
    assert isinstance(error, ProviderUnavailable) and error.code == code


def test_not_found_on_launch_is_about_the_request_not_an_instance() -> None:
    resp = error_response(404, "global/object-does-not-exist",
                          path="/api/v1/instance-operations/launch", method="POST")
    assert type(map_lambda_error(resp, "lambda")) is InvalidRequest


def test_status_decides_for_429_and_5xx_and_unknown_bodies(
        caplog: pytest.LogCaptureFixture) -> None:
    assert map_lambda_error(error_response(429, "global/quota-exceeded"), "lambda") is None
    assert map_lambda_error(error_response(503, "global/invalid-parameters"), "lambda") is None
    plain = httpx.Response(400, text="nope", request=httpx.Request("GET", "https://x/"))
    assert map_lambda_error(plain, "lambda") is None
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.lambda_cloud"):
        assert map_lambda_error(error_response(400, "global/new-thing"), "lambda") is None
    assert "global/new-thing" in caplog.text


# ---- errors over HTTP --------------------------------------------------------------------


def test_capacity(adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud) -> None:
    with pytest.raises(InsufficientCapacity) as info:
        adapter.launch(launch_request(region="us-west-3"))  # the A10 has no capacity there
    assert info.value.code == "instance-operations/launch/insufficient-capacity"
    assert info.value.status_code == 400
    lambda_cloud.fail_next("launch", "capacity")
    with pytest.raises(InsufficientCapacity):
        adapter.launch(launch_request())
    assert lambda_cloud.live_instances(ours_only=False) == []


def test_credit_is_lambdas_billing_refusal(adapter: LambdaCloudAdapter,
                                           lambda_cloud: SimulatedCloud) -> None:
    lambda_cloud.credit_ok = False
    with pytest.raises(AuthError) as info:
        adapter.launch(launch_request())
    assert (info.value.code, info.value.status_code) == ("global/invalid-address", 403)


def test_quota(adapter: LambdaCloudAdapter, lambda_cloud: SimulatedCloud) -> None:
    lambda_cloud.fail_next("launch", "quota")
    with pytest.raises(QuotaExceeded) as info:
        adapter.launch(launch_request())
    assert info.value.code == "global/quota-exceeded"


def test_provider_rejects_unknown_type(adapter: LambdaCloudAdapter) -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter.launch(launch_request(instance_type="gpu_9x_unobtainium"))
    assert info.value.code == "global/invalid-parameters"


def test_unknown_ssh_key_is_invalid_request(adapter: LambdaCloudAdapter,
                                            dialect: LambdaDialect) -> None:
    dialect.known_ssh_keys = {"laptop"}
    with pytest.raises(InvalidRequest) as info:
        adapter.launch(launch_request(ssh_key_names=("desktop",)))
    assert (info.value.code, info.value.status_code) == ("global/object-does-not-exist", 404)


def test_restarting_an_unknown_instance_is_lambdas_not_found(adapter: LambdaCloudAdapter
                                                             ) -> None:
    with pytest.raises(ProviderNotFound) as info:
        adapter.restart("no-such-instance")
    assert info.value.code == "global/object-does-not-exist"


def test_a_price_cap_is_checked_against_lambdas_price_before_the_launch(
        adapter: LambdaCloudAdapter, server: EmulatorServer, lambda_cloud: SimulatedCloud
) -> None:
    """Issue 9 item 8: ``--max-price 0.1`` on a $0.75/h type launched."""
    with pytest.raises(InsufficientCapacity) as info:
        adapter.launch(launch_request(max_price_per_hour=0.1))
    assert str(info.value) == ("lambda: gpu_1x_a10 costs $0.75/h, above max_price_per_hour "
                               "$0.10/h [above-max-price]")
    assert server.counts[LAUNCH] == 0 and lambda_cloud.live_instances() == []
    adapter.launch(launch_request(max_price_per_hour=0.75))  # at the cap is within it
    assert server.counts[LAUNCH] == 1


def test_prices_are_read_once_per_cache_period(adapter: LambdaCloudAdapter,
                                               server: EmulatorServer,
                                               clock: FakeClock) -> None:
    types = "GET /api/v1/instance-types"
    adapter.launch(launch_request("one", max_price_per_hour=1.0))
    adapter.launch(launch_request("two", max_price_per_hour=1.0))
    assert server.counts[types] == 1
    clock.advance(lambda_module.LAMBDA_PRICE_CACHE_SECONDS)
    adapter.launch(launch_request("three", max_price_per_hour=1.0))
    assert server.counts[types] == 2
    adapter.launch(launch_request("four"))  # no cap: no price needed
    assert server.counts[types] == 2


def test_a_type_lambda_does_not_list_cannot_be_price_checked(adapter: LambdaCloudAdapter,
                                                             server: EmulatorServer) -> None:
    with pytest.raises(InvalidRequest, match="max_price_per_hour cannot be checked"):
        adapter.launch(launch_request(instance_type="gpu_9x_unobtainium",
                                      max_price_per_hour=5.0))
    assert server.counts[LAUNCH] == 0


def test_unclear_restart_is_not_retried(adapter: LambdaCloudAdapter, server: EmulatorServer,
                                       lambda_cloud: SimulatedCloud) -> None:
    pid = adapter.launch(launch_request())
    lambda_cloud.settle(120)
    server.inject(HttpFault("drop", method="POST", after_work=True))
    with pytest.raises(TemporaryProviderError):
        adapter.restart(pid)
    assert server.counts["POST /api/v1/instance-operations/restart"] == 1
    lambda_cloud.settle(0.5)
    seen = adapter.get(pid)
    assert seen is not None and seen.state is InstanceState.STARTING  # it did restart


def test_slow_launch_raises_timeout_without_retry(
        make_adapter: Callable[..., LambdaCloudAdapter], server: EmulatorServer,
        lambda_cloud: SimulatedCloud) -> None:
    impatient = make_adapter(timeout=0.2)
    server.inject(HttpFault("slow", delay=0.6, method="POST"))
    with pytest.raises(ProviderTimeout):
        impatient.launch(launch_request("slow"))
    deadline = time.monotonic() + 5
    while not lambda_cloud.live_instances() and time.monotonic() < deadline:
        time.sleep(0.05)  # the server finishes the work after we gave up
    assert len(lambda_cloud.live_instances()) == 1
    assert server.counts[LAUNCH] == 1


# ---- unreadable and surprising answers (MockTransport) -----------------------------------


def test_unreadable_listing_raises_never_partial() -> None:
    good = {"id": "a", "status": "active"}
    for body in ({"data": [good, {"id": "b"}]}, {"data": None}, "<html>oops</html>"):
        def handler(request: httpx.Request, body: Any = body) -> httpx.Response:
            if isinstance(body, str):
                return httpx.Response(200, text=body)
            return httpx.Response(200, json=body)

        with mock_adapter(handler) as adapter, pytest.raises(ProviderUnavailable):
            adapter.list_instances()


def test_launch_without_ids_is_an_unknown_outcome() -> None:
    with mock_adapter(lambda r: httpx.Response(200, json={"data": {"instance_ids": []}})
                      ) as adapter, pytest.raises(ProviderUnavailable):
        adapter.launch(launch_request())


def test_terminate_accepts_an_empty_body() -> None:
    with mock_adapter(lambda r: httpx.Response(200)) as adapter:
        adapter.terminate("abc")
    with mock_adapter(lambda r: httpx.Response(204)) as adapter:
        adapter.terminate("abc")


# ---- contract: the examples and the OpenAPI document -------------------------------------


EXAMPLES = {
    "m_instances_response.json": ("get", "/api/v1/instances", LambdaInstanceListEnvelope),
    "m_instance_post_response.json": ("post", "/api/v1/instances/{id}",
                                      LambdaInstanceEnvelope),
    "m_instance_types_response.json": ("get", "/api/v1/instance-types",
                                       LambdaInstanceTypesEnvelope),
    "m_start_response.json": ("post", "/api/v1/instance-operations/launch",
                              LambdaLaunchEnvelope),
    "m_restart_response.json": ("post", "/api/v1/instance-operations/restart",
                                LambdaRestartEnvelope),
    "m_stop_response.json": ("post", "/api/v1/instance-operations/terminate",
                             LambdaTerminateEnvelope),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_parse_and_match_the_spec(name: str) -> None:
    method, template, model = EXAMPLES[name]
    body = json.loads((CONTRACT / "examples" / name).read_text())
    model.model_validate(body)
    v = validator("paths", template, method, "responses", "200", "content",
                  "application/json", "schema")
    assert schema_errors(v, body) == []


def test_example_payloads_through_the_adapter() -> None:
    files = {"/api/v1/instances": "m_instances_response.json",
             "/api/v1/instance-types": "m_instance_types_response.json",
             "/api/v1/instance-operations/launch": "m_start_response.json",
             "/api/v1/instance-operations/terminate": "m_stop_response.json",
             "/api/v1/instance-operations/restart": "m_restart_response.json"}

    def handler(request: httpx.Request) -> httpx.Response:
        text = (CONTRACT / "examples" / files[request.url.path]).read_text()
        return httpx.Response(200, text=text, headers={"content-type": "application/json"})

    with mock_adapter(handler) as adapter:
        (inst,) = adapter.list_instances()
        assert (inst.provider_instance_id, inst.raw_status, inst.state) == (
            "0920582c7ff041399e34823a0be62549", "booting", InstanceState.STARTING)
        assert (inst.name, inst.tag, inst.ip, inst.ssh_port) == (
            "My Instance", None, "198.51.100.2", 22)
        assert (inst.region, inst.instance_type, inst.price_per_hour) == (
            "us-west-1", "gpu_8x_h100_sxm5gdr", 35.92)
        offers = {o.name: o for o in adapter.instance_types()}
        assert offers["gpu_1x_gh200"].price_per_hour == 1.49
        assert offers["gpu_1x_gh200"].regions == ()
        assert adapter.launch(launch_request()) == "0920582c7ff041399e34823a0be62549"
        adapter.terminate("0920582c7ff041399e34823a0be62549")
        adapter.restart("0920582c7ff041399e34823a0be62549")


def test_the_schema_check_is_not_vacuous(exchanges: Exchanges) -> None:
    instance = json.loads((CONTRACT / "examples" / "m_instances_response.json").read_text())
    broken = dict(instance["data"][0], status="zz-new-status")
    del broken["actions"]
    assert len(schema_errors(component("Instance"), broken)) == 2
    assert schema_errors(component("InstanceLaunchRequest"),
                         {"region_name": "mars-1", "instance_type_name": "x",
                          "ssh_key_names": ["k"]})


def test_launch_body_matches_the_spec(adapter: LambdaCloudAdapter,
                                      exchanges: Exchanges) -> None:
    spec = make_spec(
        name="a very long human name " * 5,
        command="#cloud-config\nruncmd: [echo hi]\n",
        options={"hostname": "head-1", "tags": {"team": "ml", "cost:center": "42"},
                 "image": {"family": "lambda-stack-22-04"},
                 "file_system_names": ["shared"],
                 "file_system_mounts": [{"mount_point": "/data/shared",
                                         "file_system_id": "fs1"}],
                 "firewall_rulesets": ["rs1"]})
    req = LaunchRequest(spec, ownership_tag("tok9"), "tok9")
    adapter.launch(req)
    (body,) = exchanges.requests_to(LAUNCH)
    assert schema_errors(component("InstanceLaunchRequest"), body) == []
    assert "quantity" not in body
    assert len(body["name"]) == 64 and body["name"].startswith("gpufsm-tok9/a very long")
    assert body["tags"] == [{"key": "gpufsm", "value": "tok9"}, {"key": "team", "value": "ml"},
                            {"key": "cost:center", "value": "42"}]
    assert body["ssh_key_names"] == ["laptop"]
    assert body["user_data"] == spec.command
    assert body["firewall_rulesets"] == [{"id": "rs1"}]
    assert (body["hostname"], body["image"]) == ("head-1", {"family": "lambda-stack-22-04"})
    assert exchanges.check() >= 2  # this request and its answer were validated


@pytest.mark.parametrize(("token", "name"), [
    ("t" * 56, "gpufsm-" + "t" * 56),  # a 63-character tag leaves no room for the user part
    ("short", "gpufsm-short/" + "u" * 51),
])
def test_the_tag_is_never_truncated(token: str, name: str) -> None:
    with mock_adapter(lambda r: httpx.Response(500)) as adapter:
        body = adapter.launch_body(LaunchRequest(make_spec(name="u" * 200),
                                                 ownership_tag(token), token))
    assert body["name"] == name and len(body["name"]) <= 64


def test_a_tag_too_long_for_the_name_is_refused() -> None:
    with mock_adapter(lambda r: httpx.Response(500)) as adapter, \
            pytest.raises(ValidationError) as info:
        adapter.launch_body(LaunchRequest(make_spec(), ownership_tag("t" * 60), "t" * 60))
    assert info.value.field == "tag"


def test_regions_are_the_spec_enum() -> None:
    enum = OPENAPI["components"]["schemas"]["PublicRegionCode"]["enum"]
    assert list(LAMBDA_REGIONS) == enum
    assert list(LAMBDA_REGION_CODES) == enum


# ---- the emulator as Lambda's front door -------------------------------------------------


@pytest.mark.parametrize(("body", "fragment"), [
    ({"instance_type_name": "gpu_1x_a10", "ssh_key_names": ["k"]}, "region_name"),
    ({"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10",
      "ssh_key_names": ["a", "b"]}, "exactly one"),
    ({"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10",
      "ssh_key_names": ["k"], "quantity": 2}, "too many"),
    ({"region_name": "mars-1", "instance_type_name": "gpu_1x_a10",
      "ssh_key_names": ["k"]}, "region"),
    ({"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10",
      "ssh_key_names": ["k"], "tags": [{"key": "Bad", "value": "v"}]}, "tag key"),
    ("not json", "JSON"),
])
def test_emulator_refuses_bad_launch_bodies(body: Any, fragment: str,
                                            server: EmulatorServer) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        resp = client.post("/api/v1/instance-operations/launch", content=content)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "global/invalid-parameters" and fragment in error["message"]


def test_emulator_auth_and_unknown_routes(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/api/v1/instances").json()["error"]["code"] == (
            "global/invalid-api-key")
        client.headers["Authorization"] = f"Bearer {KEY}"
        assert client.get("/api/v2/instances").status_code == 404
        assert client.get("/api/v1/nowhere").status_code == 404


def test_emulator_keeps_ssh_keys_as_the_spec_shapes_them(
        server: EmulatorServer, lambda_cloud: SimulatedCloud, exchanges: Exchanges) -> None:
    """``/ssh-keys`` (list, add, generate, delete): clients manage the key a launch names
    there. Shapes are checked against the spec by ``exchanges`` at teardown."""
    server.dialect = LambdaDialect(lambda_cloud, known_ssh_keys={"laptop"})
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        [seeded] = client.get("/api/v1/ssh-keys").json()["data"]
        assert seeded["name"] == "laptop" and re.fullmatch(r"[0-9a-f]{32}", seeded["id"])
        stored = client.post("/api/v1/ssh-keys",
                             json={"name": "desk", "public_key": "ssh-ed25519 AAAA x"})
        assert stored.status_code == 200
        assert stored.json()["data"]["public_key"] == "ssh-ed25519 AAAA x"
        assert "private_key" not in stored.json()["data"]
        made = client.post("/api/v1/ssh-keys", json={"name": "fresh"}).json()["data"]
        assert made["private_key"].startswith("-----BEGIN")
        listed = client.get("/api/v1/ssh-keys").json()["data"]
        assert [k["name"] for k in listed] == ["laptop", "desk", "fresh"]
        assert all("private_key" not in k for k in listed)
        for bad in ({"name": "desk"}, {"name": ""}, {"name": "x", "public_key": ""}):
            refused = client.post("/api/v1/ssh-keys", json=bad)
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                400, "global/invalid-parameters")

        body = {"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10"}
        launched = client.post("/api/v1/instance-operations/launch",
                               json={**body, "ssh_key_names": ["fresh"]})
        assert launched.status_code == 200  # an added key can be launched with
        assert client.delete(f"/api/v1/ssh-keys/{seeded['id']}").json() == {"data": {}}
        gone = client.post("/api/v1/instance-operations/launch",
                           json={**body, "ssh_key_names": ["laptop"]})
        assert (gone.status_code, gone.json()["error"]["code"]) == (
            404, "global/object-does-not-exist")
        again = client.delete(f"/api/v1/ssh-keys/{seeded['id']}")
        assert (again.status_code, again.json()["error"]["code"]) == (
            400, "global/invalid-parameters")
    assert exchanges.check() >= 10


def _documented_errors() -> list[Any]:
    """(method, path, status, code) for each error a path the emulator serves documents."""
    schemas = OPENAPI["components"]["schemas"]
    cases = []
    for template, operations in OPENAPI["paths"].items():
        if not template.startswith(("/api/v1/instance", "/api/v1/ssh-keys")):
            continue
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if status == "200":
                    continue
                error = response["content"]["application/json"]["schema"]["properties"][
                    "error"]
                for ref in error.get("anyOf", [error]):
                    name = ref["$ref"].rsplit("/", 1)[-1]
                    code = schemas[name]["properties"]["code"]["const"]
                    path = template.replace("{id}", "0920582c7ff041399e34823a0be62549")
                    cases.append(pytest.param(method.upper(), path, int(status), code,
                                              id=f"{method}-{template}-{status}-{name}"))
    return cases


@pytest.mark.parametrize(("method", "path", "status", "code"), _documented_errors())
def test_emulator_answers_any_documented_error_in_its_documented_shape(
        method: str, path: str, status: int, code: str, server: EmulatorServer,
        exchanges: Exchanges) -> None:
    """An ``error`` HTTP fault answers the spec's own shape for that path and status
    (required ``suggestion`` included), so Lambda's generated client parses it."""
    server.inject(HttpFault("error", status=status, code=code))
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        resp = client.request(method, path, json={} if method != "GET" else None)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code
    assert exchanges.check() >= 1  # the error body matched one of the documented schemas


def test_emulator_speaks_upstream_provider_errors(adapter: LambdaCloudAdapter,
                                                  server: EmulatorServer) -> None:
    """``provider/*`` codes (NOTES.md) carry Lambda's upstream wording; the adapter reads
    them as temporary."""
    server.inject(HttpFault("error", status=400, code="provider/internal-unavailable",
                            times=10))  # temporary: the adapter retries it
    with pytest.raises(ProviderUnavailable) as info:
        adapter.list_instances()
    assert (info.value.code, info.value.status_code) == ("provider/internal-unavailable", 400)
    assert "Provider unavailable (Try again shortly)" in str(info.value)


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "field"), [
    ({"ssh_key_names": ()}, "ssh_key_names"),
    ({"ssh_key_names": ("a", "b")}, "ssh_key_names"),
    ({"region": None}, "region"),
    ({"region": "mars-1"}, "region"),
    ({"options": {"hostname": "Bad_Host"}}, "options.hostname"),
    ({"options": {"hostname": "h" * 64}}, "options.hostname"),
    ({"options": {"tags": {"Bad": "x"}}}, "options.tags.Bad"),
    ({"options": {"tags": {"k" * 56: "x"}}}, "options.tags." + "k" * 56),
    ({"options": {"tags": {"team": "v" * 129}}}, "options.tags.team"),
    ({"options": {"tags": {"gpufsm": "mine"}}}, "options.tags.gpufsm"),
    ({"options": {"tags": "team=ml"}}, "options.tags"),
    ({"options": {"image": {"id": "a", "family": "b"}}}, "options.image"),
    ({"options": {"image": "ubuntu"}}, "options.image"),
    ({"options": {"file_system_mounts": [{"mount_point": "/etc", "file_system_id": "f"}]}},
     "options.file_system_mounts"),
    ({"options": {"file_system_names": "shared"}}, "options.file_system_names"),
    ({"options": {"firewall_rulesets": [7]}}, "options.firewall_rulesets"),
    ({"options": {"hostnmae": "typo"}}, "options.hostnmae"),
    ({"image": "pytorch/pytorch:latest"}, "image"),
    ({"command": "é" * 600_000}, "command"),  # 600k characters, 1.2 MB of UTF-8
    ({"env": {"A": "b"}}, "env"),
    ({"ports": (8888,)}, "ports"),
    ({"disk_gb": 100}, "disk_gb"),
    ({"gpu_count": 2}, "gpu_count"),
    ({"instance_type": "cpu_4x_general", "gpu_count": 1}, "gpu_count"),  # count unknown
])
def test_spec_validation_names_the_field(changes: dict[str, Any], field: str,
                                         adapter: LambdaCloudAdapter,
                                         server: EmulatorServer) -> None:
    spec = make_spec(**changes)
    with pytest.raises(ValidationError) as info:
        adapter.validate(spec)
    assert info.value.field == field
    with pytest.raises(ValidationError):
        adapter.launch(LaunchRequest(spec, ownership_tag("v"), "v"))
    assert sum(server.counts.values()) == 0  # refused before any call


def test_a_full_spec_is_valid(adapter: LambdaCloudAdapter) -> None:
    adapter.validate(make_spec(
        gpu_count=1, command="#!/bin/sh\n",
        options={"hostname": "a", "tags": [{"key": "ab", "value": ""}],
                 "image": {"id": "img-1"}, "file_system_names": [],
                 "file_system_mounts": [{"mount_point": "/home/x", "file_system_id": "f"}],
                 "firewall_rulesets": [{"id": "r"}]}))


# ---- secrets, configuration, rate limits, registry ----------------------------------------


def test_documented_rate_limits_by_default(make_adapter: Callable[..., LambdaCloudAdapter],
                                          clock: FakeClock) -> None:
    assert LAMBDA_RATE_LIMITS["launch"].rate == pytest.approx(1 / 12)
    assert LAMBDA_RATE_LIMITS["default"].rate == 1.0
    adapter = make_adapter(rate_limits=None)
    start = clock.monotonic()
    pid = adapter.launch(launch_request("one"))
    adapter.get(pid)  # burst 2: a read right after a launch does not wait
    assert clock.monotonic() == start
    adapter.launch(launch_request("two"))
    assert clock.monotonic() - start >= 12 - 1e-6  # one launch per 12 s


@pytest.mark.parametrize("module", [lambda_module, dialect_module])
def test_exports_are_sorted_and_exist(module: Any) -> None:
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_permanent_errors_are_permanent() -> None:
    """The engine marks a failed launch not billable only on a permanent error."""
    for code, (_, cls) in NOTES_ERRORS.items():
        temporary = code in {"global/internal-error", "global/unknown"}
        assert issubclass(cls, TemporaryProviderError if temporary else PermanentProviderError)
