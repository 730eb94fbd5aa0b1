"""NovitaAdapter against the Novita emulator over real loopback HTTP.

Novita publishes no OpenAPI file, so the contract is NOTES.md (tests/fixtures copy): its
vocabularies are hard-coded here and checked against the notes' text, and payloads are
validated against the pydantic models written from it (``_novita_models``), both ways:
what the emulator answers and what the adapter sends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpufsm.adapters import (
    InstanceTypeOffer,
    LaunchRequest,
    RateLimit,
    RetryPolicy,
    ownership_tag,
)
from gpufsm.adapters._novita_models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
    ErrorBody,
    InstancePayload,
    ListInstancesResponse,
    ListProductsResponse,
)
from gpufsm.adapters.novita import (
    DEFAULT_RATE_LIMITS,
    NOVITA_ERRORS,
    NOVITA_STATUSES,
    NovitaAdapter,
    cheapest_offer,
    map_novita_error,
    novita_error_class,
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
from gpufsm.machines import Capabilities, InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimulatedCloud
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)
from gpufsm.testing.emulators.novita import NovitaDialect

S = InstanceState
KEY = "nv-SECRET-key-4f1c9a0b7e2d"
API = "/gpu-instance/openapi/v1"
LIST = f"GET {API}/gpu/instances"
GET = f"GET {API}/gpu/instance"
CREATE = f"POST {API}/gpu/instance/create"
PRODUCTS = f"GET {API}/products"
NOTES = Path(__file__).parents[1] / "fixtures" / "provider-api" / "novita" / "NOTES.md"

OFFERS = (
    InstanceTypeOffer("sim", "RTX 4090 24GB", 0.35, ("us-ca-01", "eu-de-01"), 1, "RTX 4090",
                      spot_price_per_hour=0.18),
    InstanceTypeOffer("sim", "H100 SXM 80GB", 2.56, ("us-ca-01",), 1, "H100"),
    InstanceTypeOffer("sim", "A100 SXM 80GB", 1.60, (), 1, "A100"),  # sold out everywhere
)

# ---- the contract, copied from NOTES.md ---------------------------------------------------

#: The 18 ``status`` words of the notes' vocabulary table.
DOC_STATUSES = (
    "toCreate", "creating", "pulling", "running", "toStart", "starting", "toStop",
    "stopping", "exited", "toRestart", "restarting", "toRemove", "removing", "removed",
    "toReset", "resetting", "migrating", "freezing",
)

#: What each word means to gpufsm (the decisions documented in the adapter).
EXPECTED_STATES = {
    "toCreate": S.CREATED, "creating": S.STARTING, "pulling": S.STARTING,
    "running": S.RUNNING, "toStart": S.STARTING, "starting": S.STARTING,
    "toStop": S.STOPPING, "stopping": S.STOPPING, "exited": S.STOPPED,
    "toRestart": S.STARTING, "restarting": S.STARTING, "toRemove": S.TERMINATING,
    "removing": S.TERMINATING, "removed": S.TERMINATED, "toReset": S.STARTING,
    "resetting": S.STARTING, "migrating": S.STARTING, "freezing": S.STOPPING,
}

#: The notes' GPU error table (reason → HTTP) and the class each must become.
DOC_ERRORS: dict[str, tuple[int, type[ProviderError]]] = {
    "UNKNOWN": (500, ProviderUnavailable),
    "GET_TOKEN_FAILED": (400, AuthError),
    "FORBIDDEN": (403, AuthError),
    "UNAUTHORIZED": (401, AuthError),
    "INVALID_API_KEY": (403, AuthError),
    "RATE_LIMIT_EXCEEDED": (429, RateLimited),
    "RESOURCE_NOT_FOUND": (400, ProviderNotFound),
    "CONFLICT": (400, InvalidRequest),
    "VALIDATOR_PARAM": (400, InvalidRequest),
    "REQUEST": (400, InvalidRequest),
    "OPERATION_LIMIT": (400, InvalidRequest),
    "INSUFFICIENT_RESOURCE": (400, InsufficientCapacity),
    "CLUSTER_STATUS": (400, InsufficientCapacity),
    "NODE_STATUS": (400, InsufficientCapacity),
    "DEPENDENT_RESOURCE_STATE": (400, InvalidRequest),
    "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE": (400, InvalidRequest),
    "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL": (400, InvalidRequest),
    "INSTANCE_LOCAL_STORAGE_NOT_FOUND": (400, InvalidRequest),
    "INVALID_COMMAND_PARAM": (400, InvalidRequest),
    "GPU_SPEC_USED": (400, InsufficientCapacity),
    "MIGRATE_INSUFFICIENT_RESOURCE": (400, InsufficientCapacity),
    "WALLET_NOT_FOUND": (500, ProviderUnavailable),
    "BALANCE_NOT_ENOUGH": (400, InsufficientCredit),
    "UNSUPPORTED_BILLING_MODE": (400, InvalidRequest),
    "EXPIRED_OR_BALANCE_NOT_ENOUGH": (400, InsufficientCredit),
    "CREATE_INSTANCE_LIMIT": (400, QuotaExceeded),
    "NETWORK_STORAGE_*": (400, InvalidRequest),
    "IMAGE_NOT_FOUND": (400, InvalidRequest),
    "IMAGE_AUTH_IN_USE": (400, InvalidRequest),
    "NETWORK_NOT_FOUND": (400, InvalidRequest),
    "NETWORK_IN_USE": (400, InvalidRequest),
    "NETWORK_MAX_LIMIT": (400, QuotaExceeded),
    "JOB_NOT_FOUND": (400, InvalidRequest),
    "TEMPLATE_NOT_FOUND": (400, InvalidRequest),
    "TEMPLATE_IS_PRIVATE": (400, InvalidRequest),
    "USER_*": (400, AuthError),
    "BANNED_USER": (400, AuthError),
    "INVALID_USER_TOKEN": (400, AuthError),
}

#: Fields of the get-instance object, plus the extra ones list items carry.
DOC_INSTANCE_FIELDS = frozenset({
    "id", "name", "clusterId", "clusterName", "imageUrl", "imageAuthId", "command",
    "entrypoint", "cpuNum", "memory", "gpuNum", "status", "statusError", "network",
    "portMappings", "volumeMounts", "node", "jobs", "envs", "connectComponentSSH",
    "connectComponentWebTerminal", "connectComponentJupyter", "connectComponentLog", "kind",
    "billingMode", "endTime", "freeStorageSize", "keepDataDay",
    "productId", "productName", "rootfsSize", "spotStatus", "spotReclaimTime",
})
#: List GPU Products response fields (docs page gpu-instance-list-products).
DOC_PRODUCT_FIELDS = frozenset({
    "id", "name", "cpuPerGpu", "memoryPerGpu", "diskPerGpu", "availableDeploy", "minRootFS",
    "maxRootFS", "minLocalStorage", "maxLocalStorage", "regions", "price", "monthlyPrice",
    "billingMethods", "spotPrice",
})


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """One socket for the module (shutting a server down costs a poll interval); each
    test swaps in a fresh dialect over its own cloud."""
    placeholder = SimulatedCloud("novita", clock=FakeClock(), instance_types=OFFERS)
    with EmulatorServer(NovitaDialect(placeholder), api_key=KEY) as srv:
        yield srv


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(server: EmulatorServer, clock: FakeClock) -> Iterator[SimulatedCloud]:
    sim = SimulatedCloud("novita", clock=clock, seed=7, instance_types=OFFERS,
                         capabilities=Capabilities(stop=True, restart=True, tags=False),
                         id_prefix="nv-")
    server.dialect = NovitaDialect(sim)
    server.clear_faults()
    server.hooks.clear()
    server.counts.clear()
    yield sim
    server.clear_faults()
    server.hooks.clear()


def make_adapter(server: EmulatorServer, clock: FakeClock, **kw: Any) -> NovitaAdapter:
    kw.setdefault("rate_limits", {})
    kw.setdefault("retry", RetryPolicy(attempts=4))
    return NovitaAdapter(kw.pop("api_key", KEY), base_url=kw.pop("base_url", server.url),
                         clock=clock, **kw)


@pytest.fixture
def adapter(server: EmulatorServer, cloud: SimulatedCloud,
            clock: FakeClock) -> Iterator[NovitaAdapter]:
    a = make_adapter(server, clock)
    yield a
    a.close()


@pytest.fixture
def exchanges(server: EmulatorServer,
              cloud: SimulatedCloud) -> list[tuple[EmulatorRequest, EmulatorResponse]]:
    seen: list[tuple[EmulatorRequest, EmulatorResponse]] = []
    server.hooks.append(lambda req, resp: seen.append((req, resp)))
    return seen


def tamper(server: EmulatorServer, path: str,
           fn: Callable[[EmulatorRequest, EmulatorResponse], None]) -> None:
    """Rewrite answers on ``path`` before they are sent (hooks run before the write)."""
    def hook(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        if req.path == f"{API}{path}" and resp.status == 200:
            fn(req, resp)
    server.hooks.append(hook)


def make_spec(**kw: Any) -> InstanceSpec:
    base: dict[str, Any] = {
        "provider": "novita", "instance_type": "RTX 4090 24GB",
        "image": "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime", "name": "trainer",
        "ports": (22, 8888), "env": {"WANDB_MODE": "offline"}, "command": "sleep infinity",
        "options": {"port_types": {8888: "http"}},
    }
    base.update(kw)
    return InstanceSpec(**base)


def launch_request(spec: InstanceSpec | None = None, token: str = "c0ffee") -> LaunchRequest:
    return LaunchRequest(spec=spec or make_spec(), tag=ownership_tag(token), client_token=token)


def launched(adapter: NovitaAdapter, cloud: SimulatedCloud, token: str = "c0ffee") -> str:
    pid = adapter.launch(launch_request(token=token))
    cloud.settle(120)
    return pid


# ---- lifecycle ---------------------------------------------------------------------------


def test_lifecycle_over_http(adapter: NovitaAdapter, cloud: SimulatedCloud,
                             server: EmulatorServer) -> None:
    request = launch_request()
    pid = adapter.launch(request)

    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("toCreate", S.CREATED)
    assert inst.tag == request.tag
    assert inst.name == request.display_name
    assert inst.ip is None

    cloud.settle(6)  # provisioning takes 1-5 s
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("pulling", S.STARTING)

    cloud.settle(120)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("running", S.RUNNING)
    assert inst.ip is not None
    assert inst.ssh_port == 40022
    assert inst.region == "us-ca-01"
    assert inst.instance_type == "RTX 4090 24GB"

    adapter.stop(pid)
    inst = adapter.get(pid)  # accepted, not begun: Novita's pending word
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("toStop", S.STOPPING)
    cloud.settle(0.5)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("stopping", S.STOPPING)
    cloud.settle(60)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("exited", S.STOPPED)
    assert inst.detail is None  # exited is the normal stopped state, not a failure

    adapter.start(pid)
    inst = adapter.get(pid)  # accepted, not begun: Novita's pending word
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("toStart", S.STARTING)
    cloud.settle(1)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("starting", S.STARTING)
    cloud.settle(60)
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is S.RUNNING

    adapter.restart(pid)
    inst = adapter.get(pid)  # accepted, not begun: Novita's pending word
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("toRestart", S.STARTING)
    cloud.settle(0.5)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("restarting", S.STARTING)
    cloud.settle(60)
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is S.RUNNING

    ours = [i for i in adapter.list_instances() if i.tag == request.tag]
    assert [i.provider_instance_id for i in ours] == [pid]

    adapter.terminate(pid)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("removing", S.TERMINATING)
    cloud.settle(15)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("removed", S.TERMINATED)
    cloud.settle(120)
    assert adapter.get(pid) is None
    adapter.terminate(pid)  # idempotent: RESOURCE_NOT_FOUND is success
    assert server.counts[f"POST {API}/gpu/instance/delete"] == 2
    assert cloud.live_instances(ours_only=False) == []


def test_list_tags_ours_and_not_others(adapter: NovitaAdapter, cloud: SimulatedCloud) -> None:
    mine = launched(adapter, cloud, token="mine")
    foreign = cloud.spawn_untracked(None, instance_type="RTX 4090 24GB")
    cloud.rename(foreign, "someone-elses-notebook")
    orphan = cloud.spawn_untracked("gpufsm-orphan", instance_type="RTX 4090 24GB")
    tags = {i.provider_instance_id: i.tag for i in adapter.list_instances()}
    assert tags == {mine: "gpufsm-mine", foreign: None, orphan: "gpufsm-orphan"}


# ---- statuses ------------------------------------------------------------------------------


def test_status_table_is_exactly_the_notes_vocabulary() -> None:
    notes = NOTES.read_text()
    for word in DOC_STATUSES:
        assert f"| {word} |" in notes, f"{word} is not in NOTES.md any more"
    assert len(DOC_STATUSES) == 18
    assert set(NOVITA_STATUSES) == set(DOC_STATUSES)
    assert dict(NOVITA_STATUSES) == EXPECTED_STATES


@pytest.mark.parametrize("word", DOC_STATUSES)
def test_every_status_word_maps_over_http(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                          word: str) -> None:
    pid = launched(adapter, cloud)
    cloud.set_raw_status(pid, word)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == (word, EXPECTED_STATES[word])
    [listed] = adapter.list_instances()
    assert listed.state is EXPECTED_STATES[word]


def test_unknown_status_is_unknown_and_logged(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                              caplog: pytest.LogCaptureFixture) -> None:
    pid = launched(adapter, cloud)
    cloud.set_raw_status(pid, "zz-new-status")
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.novita"):
        inst = adapter.get(pid)
        [listed] = adapter.list_instances()
    assert inst is not None
    assert inst.state is None
    assert inst.raw_status == "zz-new-status"
    assert listed.state is None
    records = [r for r in caplog.records if r.name == "gpufsm.adapters.novita"]
    assert records
    assert all("zz-new-status" in r.getMessage() for r in records)


def test_abnormal_status_error_is_failed_whatever_the_status(
        adapter: NovitaAdapter, cloud: SimulatedCloud) -> None:
    pid = launched(adapter, cloud)
    cloud.instance(pid).meta["error_message"] = "CUDA driver crashed"
    cloud.kill(pid)
    inst = adapter.get(pid)
    assert inst is not None
    assert (inst.raw_status, inst.state) == ("running", S.FAILED)
    assert inst.detail == "CUDA driver crashed"
    adapter.restart(pid)  # the cure the table offers for FAILED
    cloud.settle(60)
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is S.RUNNING
    assert inst.detail is None


@pytest.mark.parametrize(("status", "state"), [
    ("exited", S.FAILED), ("toCreate", S.FAILED), ("zz-new", S.FAILED),
    ("removing", S.TERMINATING), ("toRemove", S.TERMINATING), ("removed", S.TERMINATED),
])
def test_status_error_overrides_all_but_removal(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                                server: EmulatorServer, status: str,
                                                state: InstanceState) -> None:
    pid = launched(adapter, cloud)

    def fail(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        resp.body.update(status=status, statusError={
            "state": "abnormal instance status", "message": "image pull failed"})
    tamper(server, "/gpu/instance", fail)
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is state
    assert inst.detail == "image pull failed"


def test_other_status_error_states_only_add_detail(adapter: NovitaAdapter,
                                                   cloud: SimulatedCloud,
                                                   server: EmulatorServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    pid = launched(adapter, cloud)
    tamper(server, "/gpu/instance", lambda req, resp: resp.body.update(
        statusError={"state": "degraded", "message": "slow disk"}))
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.novita"):
        inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is S.RUNNING
    assert inst.detail == "degraded: slow disk"
    assert "degraded" in caplog.text


def test_spot_reclaim_is_failed_then_gone(
        adapter: NovitaAdapter, cloud: SimulatedCloud,
        exchanges: list[tuple[EmulatorRequest, EmulatorResponse]]) -> None:
    pid = adapter.launch(launch_request(make_spec(options={"billingMode": "spot"})))
    cloud.settle(120)
    inst = adapter.get(pid)
    assert inst is not None and inst.state is S.RUNNING
    # The emulator says what the docs say of a healthy spot instance.
    (got, *_) = [resp for req, resp in reversed(exchanges) if req.path.endswith("/instance")]
    assert got.body["spotStatus"] == "running"
    cloud.preempt(pid)
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.raw_status == "exited"  # not read as a normal stop
    assert inst.state is S.FAILED
    assert inst.detail is not None
    assert "reclaim" in inst.detail
    cloud.settle(120)
    assert adapter.get(pid) is None


@pytest.mark.parametrize(("spot", "status", "state"), [
    ("running", "running", S.RUNNING),
    ("notified", "running", S.RUNNING),
    ("reclaiming", "running", S.FAILED),
    ("terminated", "exited", S.FAILED),
    ("terminated", "removed", S.TERMINATED),
    ("", "running", S.RUNNING),
])
def test_spot_status(adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer,
                     spot: str, status: str, state: InstanceState) -> None:
    pid = launched(adapter, cloud)
    tamper(server, "/gpu/instance", lambda req, resp: resp.body.update(
        spotStatus=spot, status=status, spotReclaimTime="1767229200"))
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is state
    if spot == "notified":
        assert inst.detail is not None
        assert "1767229200" in inst.detail


def test_counts_as_strings_and_odd_fields_are_read_leniently(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer) -> None:
    pid = launched(adapter, cloud)
    tamper(server, "/gpu/instance", lambda req, resp: resp.body.update(
        gpuNum="two", cpuNum=None, memory="", rootfsSize="60.0", network=None,
        portMappings=[{"port": "22", "endpoint": "tcp://203.0.113.9:31022", "type": "tcp"}],
        statusError=None, spotReclaimTime=0, brandNewField={"x": 1}))
    inst = adapter.get(pid)
    assert inst is not None
    assert inst.state is S.RUNNING
    assert (inst.ip, inst.ssh_port) == ("203.0.113.9", 31022)


# ---- errors ------------------------------------------------------------------------------


def test_error_table_is_exactly_the_notes_reasons() -> None:
    notes = NOTES.read_text()
    for reason in DOC_ERRORS:
        stem = reason.rstrip("*")
        assert stem in notes or reason in ("NETWORK_IN_USE", "NETWORK_MAX_LIMIT"), reason
    assert "NETWORK_NOT_FOUND/IN_USE/MAX_LIMIT" in notes
    assert set(NOVITA_ERRORS) == set(DOC_ERRORS)
    for reason, (_, cls) in DOC_ERRORS.items():
        assert NOVITA_ERRORS[reason] is cls, reason


@pytest.mark.parametrize("reason", sorted(DOC_ERRORS))
def test_every_reason_maps_through_the_mapper(reason: str) -> None:
    status, cls = DOC_ERRORS[reason]
    wire = reason.replace("*", "SOMETHING")
    response = httpx.Response(status, json={"code": status, "reason": wire, "message": "why"})
    error = map_novita_error(response, "novita")
    assert type(error) is cls
    assert error.code == wire
    assert error.status_code == status
    assert "why" in str(error)
    assert novita_error_class(wire.lower()) is cls  # case does not matter


def test_mapper_falls_back_to_the_status() -> None:
    assert map_novita_error(httpx.Response(400, json={"code": 400}), "novita") is None
    assert map_novita_error(httpx.Response(502, text="<html>bad gateway</html>"),
                            "novita") is None
    # Novita says not-found with 400; a 404 without a reason is left to the seam, which
    # reads it as an unknown outcome (wrong path, proxy), never "instance gone".
    assert map_novita_error(httpx.Response(404, text="404 page not found"), "novita") is None
    reasoned = map_novita_error(httpx.Response(404, json={"reason": "RESOURCE_NOT_FOUND"}),
                                "novita")
    assert isinstance(reasoned, ProviderNotFound)


@pytest.mark.parametrize(("status", "cls"), [
    (400, InvalidRequest), (401, AuthError), (403, AuthError), (404, ProviderUnavailable),
    (429, RateLimited), (500, ProviderUnavailable), (503, ProviderUnavailable)])
def test_unknown_reason_is_logged_mapped_by_status_and_kept_as_the_code(
        caplog: pytest.LogCaptureFixture, status: int, cls: type[ProviderError]) -> None:
    """Issue 11: an unknown reason used to be dropped (the seam's error had no code), so
    a documented code missing from the table, or a new one, was invisible to users."""
    response = httpx.Response(status, json={"code": status, "reason": "BRAND_NEW",
                                            "message": "what happened"})
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.novita"):
        error = map_novita_error(response, "novita")
    assert type(error) is cls
    assert (error.code, error.status_code) == ("BRAND_NEW", status)
    assert "what happened" in str(error)
    assert "BRAND_NEW" in caplog.text


def test_wrong_key_is_an_auth_error_over_http(server: EmulatorServer, cloud: SimulatedCloud,
                                             clock: FakeClock) -> None:
    """The GPU API's bad key is 401 UNAUTHORIZED (the doc's GPU table; novita-sdk reads a
    401 as its AuthenticationError), not the model API's 403 INVALID_API_KEY."""
    wrong = make_adapter(server, clock, api_key="not-the-key")
    try:
        with pytest.raises(AuthError) as info:
            wrong.list_instances()
    finally:
        wrong.close()
    assert (info.value.status_code, info.value.code) == (401, "UNAUTHORIZED")


def test_capacity_error_over_http(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                  server: EmulatorServer) -> None:
    product = next(o for o in adapter.instance_types() if o.name == "RTX 4090 24GB")
    spec = make_spec(options={"productId": product.offer_id, "clusterId": "ap-jp-01"})
    with pytest.raises(InsufficientCapacity):
        adapter.launch(launch_request(spec))  # not offered there: refused before create
    assert server.counts[CREATE] == 0
    cloud.fail_next("launch", "capacity")
    with pytest.raises(InsufficientCapacity) as info:
        adapter.launch(launch_request())
    assert info.value.code == "INSUFFICIENT_RESOURCE"
    assert info.value.status_code == 400
    assert server.counts[CREATE] == 1  # permanent: never retried
    assert cloud.live_instances(ours_only=False) == []


def test_credit_and_quota_errors_over_http(adapter: NovitaAdapter,
                                           cloud: SimulatedCloud) -> None:
    cloud.credit_ok = False
    with pytest.raises(InsufficientCredit) as info:
        adapter.launch(launch_request())
    assert info.value.code == "BALANCE_NOT_ENOUGH"
    cloud.credit_ok = True
    cloud.fail_next("launch", "quota")
    with pytest.raises(QuotaExceeded) as quota:
        adapter.launch(launch_request())
    assert quota.value.code == "CREATE_INSTANCE_LIMIT"


def test_not_found_is_a_400_with_a_reason(adapter: NovitaAdapter) -> None:
    with pytest.raises(ProviderNotFound) as info:
        adapter.start("nv-404")
    assert info.value.code == "RESOURCE_NOT_FOUND"
    assert info.value.status_code == 400


def test_wrong_state_command_is_invalid_request(adapter: NovitaAdapter,
                                                cloud: SimulatedCloud) -> None:
    pid = launched(adapter, cloud)
    with pytest.raises(InvalidRequest) as info:
        adapter.start(pid)  # already running
    assert info.value.code == "CONFLICT"


def test_an_unknown_product_id_is_refused_before_create(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer) -> None:
    """``options.productId`` was sent unchecked, so the type, cluster and price cap were
    ignored for it (issue 9 item 8): it is looked up among the type's products now."""
    spec = make_spec(options={"productId": "prod-does-not-exist", "port_types": {8888: "http"}})
    with pytest.raises(InvalidRequest) as info:
        adapter.launch(launch_request(spec))
    assert info.value.code == "PRODUCT_NOT_FOUND"
    assert server.counts[CREATE] == 0
    product = next(o for o in adapter.instance_types() if o.name == "H100 SXM 80GB")
    with pytest.raises(InvalidRequest, match="is not a 'RTX 4090 24GB' product"):
        adapter.launch(launch_request(make_spec(options={"productId": product.offer_id})))
    with pytest.raises(InsufficientCapacity, match="max_price_per_hour"):
        adapter.launch(launch_request(make_spec(
            instance_type="H100 SXM 80GB", max_price_per_hour=1.0,
            options={"productId": product.offer_id})))
    assert server.counts[CREATE] == 0


def test_not_found_on_create_is_about_the_request_not_an_instance(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer) -> None:
    def image_gone(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        resp.status, resp.body = 400, {"code": 400, "reason": "RESOURCE_NOT_FOUND",
                                       "message": "image not found"}
    tamper(server, "/gpu/instance/create", image_gone)
    with pytest.raises(InvalidRequest) as info:
        adapter.launch(launch_request())
    assert not isinstance(info.value, ProviderNotFound)
    assert info.value.code == "RESOURCE_NOT_FOUND"


# ---- price and region of an instance ---------------------------------------------------------


def test_instances_carry_their_cluster_and_the_price_of_their_product(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer) -> None:
    """Issue 10 item 14: Novita rows never recorded $/h or region. Instances carry no
    price: it is the product's per-GPU price times gpuNum (products read once, cached)."""
    two = adapter.launch(launch_request(make_spec(gpu_count=2, region="eu-de-01")))
    spot = adapter.launch(launch_request(make_spec(options={"billingMode": "spot"}), "b0b"))
    seen = adapter.get(two)
    assert seen is not None and seen.region == "eu-de-01"
    # exact, not approximately: Novita's integer units divided, never multiplied by 1e-5
    # (which printed 0.35000000000000003 in `gpufsm types --json`)
    assert json.dumps(seen.price_per_hour) == "0.7"
    listed = {i.provider_instance_id: i for i in adapter.list_instances()}
    assert listed[two].price_per_hour == 0.70
    assert listed[spot].price_per_hour == 0.18  # the spot price
    assert all(json.dumps(o.price_per_hour) == repr(round(o.price_per_hour, 6))
               for o in adapter.instance_types())
    assert listed[two].region == "eu-de-01"
    products = server.counts[PRODUCTS]
    adapter.get(two)
    adapter.list_instances()
    assert server.counts[PRODUCTS] == products  # cached


def test_monthly_billing_has_no_hourly_price(adapter: NovitaAdapter, cloud: SimulatedCloud
                                             ) -> None:
    pid = adapter.launch(launch_request(make_spec(
        options={"billingMode": "monthly", "month": 1})))
    seen = adapter.get(pid)
    assert seen is not None and seen.price_per_hour is None and seen.region


def test_a_products_listing_that_fails_leaves_the_price_unknown_not_the_instance(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer) -> None:
    pid = adapter.launch(launch_request())
    server.inject(HttpFault("5xx", times=99, path_contains="/products"))
    before = server.counts[PRODUCTS]
    seen = adapter.get(pid)
    assert seen is not None and seen.price_per_hour is None
    assert [i.provider_instance_id for i in adapter.list_instances()] == [pid]
    assert server.counts[PRODUCTS] == before + 1  # tried once, then not until it expires
    assert not adapter.seam.breaker.is_open


# ---- pagination ------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "pages"), [(8, 3), (9, 4), (0, 1), (2, 1), (3, 2)])
def test_every_page_is_read(server: EmulatorServer, cloud: SimulatedCloud, clock: FakeClock,
                            count: int, pages: int) -> None:
    ids = {cloud.spawn_untracked(f"gpufsm-{n}", instance_type="RTX 4090 24GB")
           for n in range(count)}
    with make_adapter(server, clock, page_size=3) as paged:
        listed = paged.list_instances()
    assert {i.provider_instance_id for i in listed} == ids
    assert len(listed) == count
    assert server.counts[LIST] == pages


def _spawn(cloud: SimulatedCloud, n: int) -> None:
    for i in range(n):
        cloud.spawn_untracked(f"gpufsm-{i}", instance_type="RTX 4090 24GB")


@pytest.mark.parametrize("lie", ["total+1", "total-1", "page2-empty", "page2-repeats"])
def test_partial_listing_raises(server: EmulatorServer, cloud: SimulatedCloud,
                                clock: FakeClock, lie: str) -> None:
    _spawn(cloud, 7)
    first_page: list[Any] = []

    def lying(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        page = req.param("pageNum")
        if page == "1":
            first_page[:] = resp.body["instances"]
        if lie == "total+1":
            resp.body["total"] += 1
        elif lie == "total-1":
            resp.body["total"] -= 1
        elif lie == "page2-empty" and page == "2":
            resp.body["instances"] = []
        elif lie == "page2-repeats" and page == "2":
            resp.body["instances"] = list(first_page)
    tamper(server, "/gpu/instances", lying)
    with make_adapter(server, clock, page_size=3) as paged, \
            pytest.raises(ProviderUnavailable, match="partial"):
        paged.list_instances()


def test_listing_without_total_pages_until_a_short_page(server: EmulatorServer,
                                                        cloud: SimulatedCloud,
                                                        clock: FakeClock) -> None:
    _spawn(cloud, 7)
    tamper(server, "/gpu/instances", lambda req, resp: resp.body.pop("total"))
    with make_adapter(server, clock, page_size=3) as paged:
        assert len(paged.list_instances()) == 7
    assert server.counts[LIST] == 3


@pytest.mark.parametrize("garbage", ["not json at all", {"instances": [{"status": "running"}],
                                                         "total": 1}])
def test_unreadable_listing_raises(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                   server: EmulatorServer, garbage: Any) -> None:
    def spoil(req: EmulatorRequest, resp: EmulatorResponse) -> None:
        resp.body = garbage
    tamper(server, "/gpu/instances", spoil)
    with pytest.raises(ProviderUnavailable, match="unreadable"):
        adapter.list_instances()


# ---- contract: bodies both ways ------------------------------------------------------------


def test_create_body_is_the_documented_shape(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                             exchanges: list[Any]) -> None:
    request = launch_request()
    adapter.launch(request)
    [(req, resp)] = [(q, r) for q, r in exchanges if q.path.endswith("/create")]
    body = req.json()
    CreateInstanceRequest.model_validate(body)  # strict: no field the notes do not name
    product = next(o for o in adapter.instance_types() if o.name == "RTX 4090 24GB")
    assert body == {
        "name": request.display_name,
        "productId": product.offer_id,
        "gpuNum": 1,
        "rootfsSize": 60,
        "imageUrl": "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
        "kind": "gpu",
        "ports": "22/tcp, 8888/http",
        "envs": [{"key": "WANDB_MODE", "value": "offline"}],
        "command": "sleep infinity",
    }
    assert req.headers["authorization"] == f"Bearer {KEY}"
    CreateInstanceResponse.model_validate(resp.body)


def test_options_reach_the_body(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                exchanges: list[Any]) -> None:
    spec = make_spec(region="eu-de-01", gpu_count=2, disk_gb=200, ports=(), options={
        "billingMode": "spot", "imageAuth": "user:pass", "minCudaVersion": "12.1",
        "tools": [{"name": "Jupyter", "port": 8888, "type": "http"}]})
    adapter.launch(launch_request(spec))
    [body] = [q.json() for q, _ in exchanges if q.path.endswith("/create")]
    CreateInstanceRequest.model_validate(body)
    assert body["clusterId"] == "eu-de-01"
    assert body["billingMode"] == "spot"
    assert (body["gpuNum"], body["rootfsSize"]) == (2, 200)
    assert body["tools"] == [{"name": "Jupyter", "port": 8888, "type": "http"}]
    assert "ports" not in body
    [products] = [q for q, _ in exchanges if q.path.endswith("/products")]
    assert products.param("billingMethod") == "spot"
    assert products.param("gpuNum") == "2"
    assert cloud.live_instances()[0].region == "eu-de-01"


def test_every_emulator_answer_is_the_documented_shape(
        adapter: NovitaAdapter, cloud: SimulatedCloud, exchanges: list[Any]) -> None:
    pid = launched(adapter, cloud)
    adapter.get(pid)
    adapter.list_instances()
    adapter.stop(pid)
    cloud.settle(60)
    adapter.list_instances()
    adapter.start(pid)
    adapter.get("nv-404")
    adapter.instance_types()
    adapter.terminate(pid)
    adapter.list_instances()
    seen_paths = set()
    for req, resp in exchanges:
        path = req.path.removeprefix(API)
        seen_paths.add(path)
        if resp.status != 200:
            error = ErrorBody.model_validate(resp.body)
            assert error.code == resp.status
            assert error.reason in NOVITA_ERRORS
            assert set(resp.body) == {"code", "reason", "message"}
        elif path == "/gpu/instances":
            listing = ListInstancesResponse.model_validate(resp.body)
            assert set(resp.body) == {"instances", "total"}
            assert listing.total == len(resp.body["instances"])
            for item in resp.body["instances"]:
                _check_instance(item)
        elif path == "/gpu/instance":
            _check_instance(resp.body)
        elif path == "/gpu/instance/create":
            assert set(resp.body) == {"id"}
        elif path == "/products":
            products = ListProductsResponse.model_validate(resp.body)
            assert products.data
            for item in resp.body["data"]:
                assert set(item) <= DOC_PRODUCT_FIELDS, set(item) - DOC_PRODUCT_FIELDS
                assert isinstance(item["price"], int)
                assert isinstance(item["spotPrice"], str)
        elif path == "/gpu/instance/delete":
            assert resp.body is None  # empty 200, handled by the adapter
        else:
            assert path in {"/gpu/instance/start", "/gpu/instance/stop"}, path
    assert {"/gpu/instances", "/gpu/instance", "/gpu/instance/create", "/products",
            "/gpu/instance/delete", "/gpu/instance/stop"} <= seen_paths


def _check_instance(item: dict[str, Any]) -> None:
    assert set(item) <= DOC_INSTANCE_FIELDS, set(item) - DOC_INSTANCE_FIELDS
    InstancePayload.model_validate(item)
    assert item["status"] in DOC_STATUSES
    for count in ("cpuNum", "memory", "gpuNum"):
        assert isinstance(item[count], str)  # the notes: counts are strings
    assert set(item["statusError"]) == {"state", "message"}
    assert set(item["network"]) <= {"id", "ip"}


@pytest.mark.parametrize(("body", "reason"), [
    ({"productId": "p", "gpuNum": 1, "rootfsSize": 60, "kind": "gpu"}, "VALIDATOR_PARAM"),
    ({"productId": "p", "gpuNum": 9, "rootfsSize": 60, "imageUrl": "i", "kind": "gpu"},
     "VALIDATOR_PARAM"),
    ({"productId": "p", "gpuNum": 1, "rootfsSize": 60, "imageUrl": "i", "kind": "gpu",
      "ports": "2222/tcp"}, "VALIDATOR_PARAM"),
    ({"productId": "p", "gpuNum": 1, "rootfsSize": 60, "imageUrl": "i", "kind": "gpu",
      "surprise": 1}, "VALIDATOR_PARAM"),
    ("[1, 2]", "REQUEST"),
])
def test_emulator_refuses_what_novita_refuses(server: EmulatorServer, cloud: SimulatedCloud,
                                              body: Any, reason: str) -> None:
    with httpx.Client(base_url=server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        if isinstance(body, str):
            response = client.post(f"{API}/gpu/instance/create", content=body)
        else:
            response = client.post(f"{API}/gpu/instance/create", json=body)
        assert response.status_code == 400
        assert response.json()["reason"] == reason
        listing = client.get(f"{API}/gpu/instances", params={"pageSize": "ten"})
        assert listing.status_code == 400 and listing.json()["reason"] == "VALIDATOR_PARAM"
        # Absent, they default (novita-sdk and Novita's MCP server send none): page 1.
        assert client.get(f"{API}/gpu/instances").json() == {"instances": [], "total": 0}
    assert cloud.live_instances(ours_only=False) == []


# ---- products ------------------------------------------------------------------------------


def test_instance_types_in_dollars(adapter: NovitaAdapter, cloud: SimulatedCloud) -> None:
    offers = {o.name: o for o in adapter.instance_types()}
    rtx, h100, a100 = (offers["RTX 4090 24GB"], offers["H100 SXM 80GB"],
                       offers["A100 SXM 80GB"])
    assert rtx.price_per_hour == pytest.approx(0.35)
    assert rtx.spot_price_per_hour == pytest.approx(0.18)
    assert rtx.regions == ("us-ca-01", "eu-de-01")
    assert rtx.available
    assert rtx.provider == "novita"
    assert rtx.offer_id
    assert rtx.offer_id.startswith("prod-")
    assert h100.spot_price_per_hour is None  # "0" means no spot offer
    # Issue 10 item 14: ``types`` showed no GPU count. A product is one GPU at its price.
    assert (rtx.gpus, h100.gpus) == (1, 1)
    assert rtx.description is not None and "per GPU" in rtx.description
    assert "1-8 GPUs" in rtx.description
    assert not a100.available
    assert a100.regions == ()
    assert cheapest_offer(offers.values()) is rtx
    assert cheapest_offer(offers.values(), spot=True) is rtx
    assert cheapest_offer(offers.values(), region="nowhere") is None


def test_cheapest_offer_weighs_spot_and_deployability() -> None:
    def offer(name: str, price: float, spot: float | None, deploy: bool,
              regions: tuple[str, ...] = ("r1",)) -> InstanceTypeOffer:
        return InstanceTypeOffer("novita", name, price, regions, spot_price_per_hour=spot,
                                 offer_id=name, extra={"available_deploy": deploy})
    a = offer("a", 1.0, 0.9, True)
    b = offer("b", 1.5, 0.4, True)
    c = offer("c", 0.1, 0.05, False)
    d = offer("d", 0.9, None, True, regions=())  # deployable, regions not listed
    assert cheapest_offer([a, b, c, d]) is d
    assert cheapest_offer([a, b, c, d], spot=True) is b
    assert cheapest_offer([a, b, c, d], region="r1") is a
    assert cheapest_offer([c]) is None


def test_launch_picks_the_cheapest_deployable_product_of_that_name() -> None:
    products = [
        {"id": "p-dear", "name": "RTX 4090 24GB", "availableDeploy": True, "price": 50000,
         "regions": ["a"]},
        {"id": "p-cheap", "name": "RTX 4090 24GB", "availableDeploy": True, "price": 30000,
         "regions": ["b"]},
        {"id": "p-gone", "name": "RTX 4090 24GB", "availableDeploy": False, "price": 10000},
        {"id": "p-other", "name": "RTX 4090 24GB PCIe", "availableDeploy": True, "price": 1},
    ]
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/products"):
            return httpx.Response(200, json={"data": products})
        sent.append(httpx.Response(200, content=request.content).json())
        return httpx.Response(200, json={"id": "inst-1"})

    with NovitaAdapter(KEY, transport=httpx.MockTransport(handler), rate_limits={},
                       clock=FakeClock()) as mock:
        assert mock.launch(launch_request()) == "inst-1"
    assert sent[0]["productId"] == "p-cheap"


@pytest.mark.parametrize(("spec_kw", "error"), [
    ({"instance_type": "RTX 9090 1TB"}, InvalidRequest),
    ({"instance_type": "A100 SXM 80GB"}, InsufficientCapacity),
    ({"instance_type": "H100 SXM 80GB", "options": {"billingMode": "spot"}},
     InsufficientCapacity),
    ({"region": "ap-jp-01"}, InsufficientCapacity),
    ({"max_price_per_hour": 0.1}, InsufficientCapacity),
    ({"gpu_count": 2, "max_price_per_hour": 0.5}, InsufficientCapacity),
])
def test_launch_refuses_before_create(adapter: NovitaAdapter, cloud: SimulatedCloud,
                                      server: EmulatorServer, spec_kw: dict[str, Any],
                                      error: type[ProviderError]) -> None:
    with pytest.raises(error):
        adapter.launch(launch_request(make_spec(**spec_kw)))
    assert server.counts[CREATE] == 0
    assert server.counts[PRODUCTS] == 1


# ---- spec validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("spec_kw", "field"), [
    ({"image": None}, "image"),
    ({"disk_gb": 5}, "disk_gb"),
    ({"disk_gb": 7000}, "disk_gb"),
    ({"gpu_count": 9}, "gpu_count"),
    ({"ports": (22, 2223)}, "ports"),
    ({"ports": tuple(range(8000, 8016))}, "ports"),
    ({"ports": (8000,) * 2}, "ports"),
    ({"ports": tuple(range(8000, 8014)),
      "options": {"tools": [{"name": "Jupyter", "port": 8888, "type": "http"}] * 2}}, "ports"),
    ({"env": {f"V{i}": "x" for i in range(101)}}, "env"),
    ({"env": {"": "x"}}, "env"),
    ({"command": "x" * 2048}, "command"),
    ({"name": "n" * 250}, "name"),
    ({"options": {"productid": "typo"}}, "options.productid"),
    ({"options": {"billingMode": "hourly"}}, "options.billingMode"),
    ({"options": {"kind": "tpu"}}, "options.kind"),
    ({"options": {"billingMode": "monthly"}}, "options.month"),
    ({"options": {"port_types": {9999: "http"}}}, "options.port_types.9999"),
    ({"options": {"port_types": {22: "udp"}}}, "options.port_types.22"),
    ({"ssh_key_names": ("laptop",)}, "ssh_key_names"),  # Novita takes no key names
    ({"region": "us-ca-01", "options": {"clusterId": "eu-de-01"}}, "region"),
])
def test_spec_validation_names_the_field_before_any_call(
        adapter: NovitaAdapter, cloud: SimulatedCloud, server: EmulatorServer,
        spec_kw: dict[str, Any], field: str) -> None:
    spec = make_spec(**spec_kw)
    with pytest.raises(ValidationError) as info:
        adapter.validate(spec)
    assert info.value.field == field
    with pytest.raises(ValidationError):
        adapter.launch(launch_request(spec))
    assert sum(server.counts.values()) == 0


def test_a_good_spec_validates(adapter: NovitaAdapter) -> None:
    adapter.validate(make_spec())
    adapter.validate(make_spec(gpu_count=8, disk_gb=6144, ports=tuple(range(8000, 8015)),
                               options={"billingMode": "monthly", "month": 1}))


# ---- secrets ----------------------------------------------------------------------------------


def test_documented_default_rate_limit_is_a_stated_guess() -> None:
    assert dict(DEFAULT_RATE_LIMITS) == {"default": RateLimit(5.0, burst=5)}
