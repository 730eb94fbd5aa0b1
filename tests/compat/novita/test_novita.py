"""novita-sdk 0.5.0 (php-workx/novita-sdk-python) against ``gpufsm emulator --dialect novita``.

Novita publishes no OpenAPI file; this SDK's pydantic models are the best outside evidence
of the shapes its GPU-instance API really answers with (its integration tests run against
the live API). Every answer here is parsed by those models, so a field the emulator omits,
mistypes or spells differently fails the test. Faults are asserted the way the SDK is
built to surface them: 400 → ``BadRequestError`` with the decoded body in ``details``,
401 → ``AuthenticationError``, 429 → ``RateLimitError`` (no retry, Retry-After not read),
5xx → ``APIError`` carrying the status and the raw body.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from novita import (
    APIError,
    AsyncNovitaClient,
    AuthenticationError,
    BadRequestError,
    BillingMode,
    CreateInstanceRequest,
    GPUProduct,
    InstanceInfo,
    Kind,
    NovitaClient,
    RateLimitError,
)
from novita.generated.models import Env, SpotStatus, Status

from conftest import KEY

DIALECT = "novita"

BASE = "/gpu-instance/openapi/v1"
IMAGE = "docker.io/library/ubuntu:22.04"

#: The 18 status words of the notes' vocabulary table, as the SDK's enum spells them.
DOCUMENTED_STATUSES = (
    "toCreate", "creating", "pulling", "running", "toStart", "starting", "toStop",
    "stopping", "exited", "toRestart", "restarting", "toRemove", "removing", "removed",
    "toReset", "resetting", "migrating", "freezing",
)


@pytest.fixture
def client(emu):
    # The SDK's base_url is the host: it prepends /gpu-instance/openapi/v1 itself.
    with NovitaClient(api_key=KEY, base_url=emu.url, timeout=10) as c:
        yield c


def _product(client: NovitaClient, name: str) -> GPUProduct:
    (product,) = [p for p in client.gpu.products.list() if p.name == name]
    return product


def _create(client: NovitaClient, name: str, *, product: str = "RTX 4090 24GB",
            **fields) -> str:
    request = CreateInstanceRequest(
        name=name, product_id=_product(client, product).id, gpu_num=1, rootfs_size=60,
        image_url=IMAGE, kind=Kind.gpu, **fields)
    return client.gpu.instances.create(request).id


# ---- products ---------------------------------------------------------------------------


def test_products_parse_with_prices_in_hundred_thousandths(client):
    products = client.gpu.products.list()
    assert all(isinstance(p, GPUProduct) for p in products)
    by_name = {p.name: p for p in products}
    assert set(by_name) == {"RTX 4090 24GB", "A100 PCIe 80GB", "H100 SXM 80GB", "A100 SXM 80GB"}

    rtx = by_name["RTX 4090 24GB"]
    assert rtx.price_raw == 35000 and rtx.price == pytest.approx(0.35)
    assert rtx.regions == ["us-ca-01", "eu-de-01"]
    assert rtx.available_deploy is True
    assert (rtx.min_root_fs, rtx.max_root_fs) == (10, 6144)
    assert rtx.cpu_per_gpu > 0 and rtx.memory_per_gpu > 0 and rtx.disk_per_gpu > 0
    assert "onDemand" in rtx.billing_methods
    assert [(m.month, m.price_raw) for m in rtx.monthly_price] == [(1, 35000 * 600)]
    assert by_name["H100 SXM 80GB"].price == pytest.approx(2.56)
    # The sold-out product is listed, not deployable, in no region.
    a100 = by_name["A100 SXM 80GB"]
    assert a100.available_deploy is False and a100.regions == []


def test_products_filters(client):
    assert [p.name for p in client.gpu.products.list(product_name="h100")] == ["H100 SXM 80GB"]
    assert [p.name for p in client.gpu.products.list(cluster_id="eu-de-01")] == [
        "RTX 4090 24GB", "A100 PCIe 80GB"]
    assert [p.name for p in client.gpu.products.list(billing_method="spot")] == [
        "A100 PCIe 80GB"]


# ---- the lifecycle ----------------------------------------------------------------------


def test_create_get_stop_start_restart_delete(client, emu):
    before = emu.requests_served()
    product = _product(client, "RTX 4090 24GB")
    request = CreateInstanceRequest(
        name="gpufsm-abc/train", product_id=product.id, gpu_num=2, rootfs_size=80,
        image_url=IMAGE, kind=Kind.gpu, ports="8888/http, 22/tcp",
        envs=[Env(key="MODE", value="train")], cluster_id="eu-de-01",
        billing_mode=BillingMode.on_demand, command="sleep infinity")
    created = client.gpu.instances.create(request)
    iid = created.id
    assert iid and [i["id"] for i in emu.instances()] == [iid]

    first = client.gpu.instances.get(iid)
    assert isinstance(first, InstanceInfo)
    assert first.id == iid and first.name == "gpufsm-abc/train"
    assert first.status is Status.to_create
    assert first.cluster_id == "eu-de-01"
    assert (first.product_id, first.product_name) == (product.id, "RTX 4090 24GB")
    assert (first.gpu_num, first.rootfs_size, first.image_url) == ("2", 80, IMAGE)
    assert first.command == "sleep infinity"
    assert [(e.key, e.value) for e in first.envs] == [("MODE", "train")]
    assert first.billing_mode == "onDemand" and first.end_time == "-1"
    assert first.spot_status is None  # "" means not spot: the SDK reads it as None
    assert first.port_mappings == []  # nothing reachable before it runs

    emu.settle()
    up = client.gpu.instances.get(iid)
    assert up.status is Status.running
    assert up.network.ip and up.cpu_num.isdigit() and up.memory.isdigit()
    ports = {m.port: m for m in up.port_mappings}
    assert set(ports) == {8888, 22}
    assert ports[22].type == "tcp" and ports[22].endpoint.startswith(f"{up.network.ip}:")
    assert [v.mount_path for v in up.volume_mounts] == ["/"]
    assert up.node.max_rootfs_size == 6144  # an object, as the SDK (not the docs) has it

    # Each command reads "to<Verb>" (accepted) until its first step, then the -ing word.
    client.gpu.instances.stop(iid)
    assert client.gpu.instances.get(iid).status is Status.to_stop
    emu.settle(1)
    assert client.gpu.instances.get(iid).status is Status.stopping
    emu.settle()
    assert client.gpu.instances.get(iid).status is Status.exited  # Novita's "stopped"

    client.gpu.instances.start(iid)
    assert client.gpu.instances.get(iid).status is Status.to_start
    emu.settle(1)
    assert client.gpu.instances.get(iid).status is Status.starting
    emu.settle()
    assert client.gpu.instances.get(iid).status is Status.running

    client.gpu.instances.restart(iid)
    assert client.gpu.instances.get(iid).status is Status.to_restart
    emu.settle(1)
    assert client.gpu.instances.get(iid).status is Status.restarting
    emu.settle()
    assert client.gpu.instances.get(iid).status is Status.running

    client.gpu.instances.delete(iid)  # an empty 200 body: the SDK reads none
    assert client.gpu.instances.get(iid).status is Status.removing
    emu.settle(10)
    assert client.gpu.instances.get(iid).status is Status.removed
    emu.settle()
    with pytest.raises(BadRequestError) as gone:  # Novita's not-found is a 400
        client.gpu.instances.get(iid)
    assert gone.value.details["reason"] == "RESOURCE_NOT_FOUND"

    served = emu.requests_served()
    for path in ("/gpu/instance/create", "/gpu/instance/stop", "/gpu/instance/start",
                 "/gpu/instance/restart", "/gpu/instance/delete"):
        key = f"POST {BASE}{path}"
        assert served[key] - before.get(key, 0) == 1, path


def test_list_pages_and_filters(client, emu):
    ids = [_create(client, f"job-{n}") for n in range(3)]
    emu.settle()
    client.gpu.instances.stop(ids[2])
    emu.settle()

    everything = client.gpu.instances.list(page_size=10, page_num=1)
    assert all(isinstance(i, InstanceInfo) for i in everything)
    assert sorted(i.id for i in everything) == sorted(ids)
    assert {i.product_name for i in everything} == {"RTX 4090 24GB"}

    page1 = client.gpu.instances.list(page_size=2, page_num=1)
    page2 = client.gpu.instances.list(page_size=2, page_num=2)
    assert (len(page1), len(page2)) == (2, 1)
    assert sorted(i.id for i in page1 + page2) == sorted(ids)

    assert [i.id for i in client.gpu.instances.list(page_size=10, page_num=1,
                                                   status="exited")] == [ids[2]]
    assert [i.name for i in client.gpu.instances.list(page_size=10, page_num=1,
                                                     name="job-1")] == ["job-1"]


def test_list_without_paging_gives_the_first_page(client, emu):
    # The docs mark pageSize and pageNum required, but the SDK sends neither by default:
    # the emulator answers page 1 of 10, as a live API that tolerates it must.
    ids = [_create(client, f"bare-{n}") for n in range(11)]
    first = client.gpu.instances.list()
    assert [i.id for i in first] == ids[:10]
    assert [i.id for i in client.gpu.instances.list(page_num=0)] == ids[:10]  # 0 is 1
    with pytest.raises(BadRequestError) as refused:
        client.gpu.instances.list(page_size=-1)
    assert refused.value.details["reason"] == "VALIDATOR_PARAM"


def test_every_documented_status_parses_into_the_sdk_enum(client, emu):
    spawned = emu.cloud_fault("spawn_untracked", name="console-made")
    pid = spawned["provider_id"]
    for word in DOCUMENTED_STATUSES:
        emu.cloud_fault("set_raw_status", id=spawned["id"], raw_status=word)
        seen = client.gpu.instances.get(pid)
        assert seen.status == Status(word), word
        (listed,) = client.gpu.instances.list(page_size=10, page_num=1)
        assert listed.status == Status(word), word


def test_failure_and_spot_reclaim_read_through_the_sdk(client, emu):
    broken = _create(client, "crashes")
    spot = _create(client, "reclaimed")
    emu.settle()
    # Novita's instance ids are the simulated cloud's own: the admin API takes them as is.
    emu.cloud_fault("kill", id=broken)
    emu.cloud_fault("preempt", id=spot)

    failed = client.gpu.instances.get(broken)
    assert failed.status is Status.running  # Novita keeps the word; the flag says it
    assert failed.status_error.state == "abnormal instance status"
    assert failed.status_error.message

    reclaimed = client.gpu.instances.get(spot)
    assert reclaimed.status is Status.exited
    assert reclaimed.spot_status is SpotStatus.reclaiming
    assert reclaimed.spot_reclaim_time not in (None, "0")


def test_async_client_reads_the_same_answers(emu):
    iid_holder: list[str] = []

    async def run() -> None:
        async with AsyncNovitaClient(api_key=KEY, base_url=emu.url, timeout=10) as c:
            products = await c.gpu.products.list(product_name="RTX")
            created = await c.gpu.instances.create(CreateInstanceRequest(
                name="async", product_id=products[0].id, gpu_num=1, rootfs_size=40,
                image_url=IMAGE, kind=Kind.gpu))
            iid_holder.append(created.id)
            got = await c.gpu.instances.get(created.id)
            assert (got.name, got.status) == ("async", Status.to_create)
            listed = await c.gpu.instances.list(page_size=5, page_num=1)
            assert [i.id for i in listed] == [created.id]
            await c.gpu.instances.delete(created.id)

    asyncio.run(run())
    assert len(iid_holder) == 1


# ---- errors the simulated cloud causes ----------------------------------------------------


def test_create_refusals_carry_novitas_reason(client, emu):
    emu.cloud_fault("fail_next", op="launch", error="capacity")
    with pytest.raises(BadRequestError) as capacity:
        _create(client, "no-room")
    assert capacity.value.details == {"code": 400, "reason": "INSUFFICIENT_RESOURCE",
                                      "message": capacity.value.details["message"]}

    emu.cloud_fault("credit", ok=False)
    with pytest.raises(BadRequestError) as broke:
        _create(client, "no-money")
    assert broke.value.details["reason"] == "BALANCE_NOT_ENOUGH"
    emu.cloud_fault("credit", ok=True)

    with pytest.raises(BadRequestError) as unknown:
        client.gpu.instances.create(CreateInstanceRequest(
            name="x", product_id="prod-nope", gpu_num=1, rootfs_size=60, image_url=IMAGE,
            kind=Kind.gpu))
    assert unknown.value.details["reason"] == "RESOURCE_NOT_FOUND"

    with pytest.raises(BadRequestError) as no_spot:  # no product here has a spot price
        _create(client, "spot", billing_mode=BillingMode.spot)
    assert no_spot.value.details["reason"] == "UNSUPPORTED_BILLING_MODE"

    with pytest.raises(BadRequestError) as reserved:
        _create(client, "bad-port", ports="2222/tcp")
    assert reserved.value.details["reason"] == "VALIDATOR_PARAM"
    assert emu.instances() == []


def test_documented_error_codes_through_an_error_fault(client, emu):
    emu.http_fault("error", status=400, code="CREATE_INSTANCE_LIMIT",
                   path_contains="/gpu/instance/create")
    with pytest.raises(BadRequestError) as limit:
        _create(client, "one-too-many")
    assert limit.value.details["reason"] == "CREATE_INSTANCE_LIMIT"
    assert limit.value.details["code"] == 400

    emu.http_fault("error", status=500, code="WALLET_NOT_FOUND")
    with pytest.raises(APIError) as wallet:
        client.gpu.products.list()
    assert wallet.value.status_code == 500
    assert '"reason": "WALLET_NOT_FOUND"' in wallet.value.response_body.replace(
        '":"', '": "')


# ---- HTTP faults ------------------------------------------------------------------------


def test_429_raises_rate_limit_error_without_retrying(client, emu):
    seen: list[httpx.Response] = []
    # The SDK drops the response when it raises; a hook ahead of its own sees the header.
    client._http_client.event_hooks["response"].insert(0, seen.append)
    listings = f"GET {BASE}/gpu/instances"
    before = emu.requests_served().get(listings, 0)
    emu.http_fault("429", retry_after=7, path_contains="/gpu/instances")
    with pytest.raises(RateLimitError) as limited:
        client.gpu.instances.list(page_size=10, page_num=1)
    assert limited.value.status_code == 429
    assert seen[-1].status_code == 429 and seen[-1].headers["Retry-After"] == "7"
    assert seen[-1].json()["reason"] == "RATE_LIMIT_EXCEEDED"
    assert emu.requests_served()[listings] == before + 1  # no retry of its own
    assert client.gpu.instances.list(page_size=10, page_num=1) == []


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_raises_api_error_with_status_and_body(client, emu, status):
    emu.http_fault("5xx", status=status, path_contains="/products")
    with pytest.raises(APIError) as failed:
        client.gpu.products.list()
    assert failed.value.status_code == status
    assert "UNKNOWN" in failed.value.response_body
    assert len(client.gpu.products.list()) == 4  # one fault, then the API answers again


def test_wrong_key_raises_authentication_error(novita_emulator):
    # A fresh emulator of the shared fixture: the key check owes nothing to earlier tests.
    with (NovitaClient(api_key="not-the-key", base_url=novita_emulator.url) as wrong,
          pytest.raises(AuthenticationError) as denied):
        wrong.gpu.instances.list(page_size=10, page_num=1)
    assert denied.value.status_code == 401


def test_401_fault_raises_authentication_error(client, emu):
    emu.http_fault("401", path_contains="/gpu/instance")
    with pytest.raises(AuthenticationError):
        client.gpu.instances.get("anything")
    with pytest.raises(BadRequestError):  # the fault is spent: a real not-found now
        client.gpu.instances.get("anything")
