"""Lambda's own generated client (lambda-ai-cloud-api-client, from spec 1.8.3) against
``gpufsm emulator --dialect lambda``.

Every answer goes through the client's attrs models (``from_dict``), which refuse a missing
required field, a status word outside ``InstanceStatus``, a region outside
``PublicRegionCode`` or an error ``code`` other than the schema's constant: a test that
reads a parsed field proves the emulator spoke the documented shape. The client raises
nothing on a documented error status; it hands back the status's error model. A status the
spec does not document (429, 5xx) comes back unparsed, or as ``errors.UnexpectedStatus``
when the client is built with ``raise_on_unexpected_status=True``.

One emulator serves the module (each start costs a second or more); every test clears the
faults first and only looks at the instances it made.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from emulator import Emulator
from lambda_ai_cloud_api_client import AuthenticatedClient, errors
from lambda_ai_cloud_api_client.api.instances import (
    get_instance,
    launch_instance,
    list_instance_types,
    list_instances,
    post_instance,
    restart_instance,
    terminate_instance,
)
from lambda_ai_cloud_api_client.api.ssh_keys import add_ssh_key, delete_ssh_key, list_ssh_keys
from lambda_ai_cloud_api_client.models import (
    AddSSHKeyRequest,
    AddSSHKeyResponse200,
    AddSSHKeyResponse400,
    ApiErrorAccountInactive,
    ApiErrorFileSystemInWrongRegion,
    ApiErrorInstanceNotFound,
    ApiErrorInsufficientCapacity,
    ApiErrorInternal,
    ApiErrorInvalidBillingAddress,
    ApiErrorInvalidParameters,
    ApiErrorLaunchResourceNotFound,
    ApiErrorQuotaExceeded,
    ApiErrorUnauthorized,
    DeleteSSHKeyResponse200,
    DeleteSSHKeyResponse400,
    EmptyResponse,
    GeneratedSSHKey,
    GetInstanceResponse200,
    GetInstanceResponse404,
    Instance,
    InstanceActionUnavailableCode,
    InstanceLaunchRequest,
    InstanceModificationRequest,
    InstanceRestartRequest,
    InstanceStatus,
    InstanceTerminateRequest,
    LaunchInstanceResponse200,
    LaunchInstanceResponse400,
    LaunchInstanceResponse403,
    LaunchInstanceResponse404,
    ListInstancesResponse200,
    ListInstancesResponse401,
    ListInstancesResponse403,
    ListInstanceTypesResponse200,
    ListSSHKeysResponse200,
    PostInstanceResponse200,
    PostInstanceResponse404,
    PublicRegionCode,
    RequestedTagEntry,
    RestartInstanceResponse200,
    RestartInstanceResponse404,
    SSHKey,
    TerminateInstanceResponse200,
    TerminateInstanceResponse404,
)
from lambda_ai_cloud_api_client.types import UNSET

from conftest import KEY

DIALECT = "lambda"

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICN+lJwsONkwrdsSnQsu1ydUkIuIg5oOC compat"


@pytest.fixture
def client(emu: Emulator) -> Iterator[AuthenticatedClient]:
    with AuthenticatedClient(base_url=emu.url, token=KEY) as c:
        yield c


def launch_body(**kw: object) -> InstanceLaunchRequest:
    fields: dict[str, object] = {"region_name": PublicRegionCode.US_EAST_1,
                                 "instance_type_name": "gpu_1x_a10",
                                 "ssh_key_names": ["laptop"], "name": "compat-run"}
    fields.update(kw)
    return InstanceLaunchRequest(**fields)  # type: ignore[arg-type]


def launch(client: AuthenticatedClient, **kw: object) -> str:
    resp = launch_instance.sync_detailed(client=client, body=launch_body(**kw))
    assert resp.status_code == 200, resp.content
    assert isinstance(resp.parsed, LaunchInstanceResponse200)
    [pid] = resp.parsed.data.instance_ids
    return pid


def fetch(client: AuthenticatedClient, pid: str) -> Instance:
    resp = get_instance.sync_detailed(pid, client=client)
    assert isinstance(resp.parsed, GetInstanceResponse200), resp.content
    return resp.parsed.data


# ---- the lifecycle ------------------------------------------------------------------------


def test_instance_types_parse_with_prices_specs_and_regions(emu: Emulator,
                                                            client: AuthenticatedClient
                                                            ) -> None:
    resp = list_instance_types.sync_detailed(client=client)
    assert isinstance(resp.parsed, ListInstanceTypesResponse200), resp.content
    items = resp.parsed.data.additional_properties
    assert set(items) == set(emu.provider_json("/api/v1/instance-types", KEY)["data"])
    assert {"gpu_1x_a10", "gpu_1x_h100_pcie", "gpu_8x_h100_sxm5"} <= set(items)
    a10 = items["gpu_1x_a10"]
    assert (a10.instance_type.name, a10.instance_type.price_cents_per_hour,
            a10.instance_type.gpu_description) == ("gpu_1x_a10", 75, "A10 (24 GB PCIe)")
    assert a10.instance_type.specs.gpus == 1
    assert [r.name for r in a10.regions_with_capacity_available] == [
        PublicRegionCode.US_EAST_1, PublicRegionCode.US_WEST_1]
    h100x8 = items["gpu_8x_h100_sxm5"]
    assert (h100x8.instance_type.price_cents_per_hour, h100x8.instance_type.specs.gpus) == (
        2392, 8)
    assert h100x8.regions_with_capacity_available == []  # sold out everywhere


def test_launch_get_list_rename_restart_terminate(emu: Emulator,
                                                  client: AuthenticatedClient) -> None:
    pid = launch(client, tags=[RequestedTagEntry(key="team", value="ml")],
                 hostname="trainer-1")

    booting = fetch(client, pid)
    assert (booting.id, booting.status, booting.name) == (pid, InstanceStatus.BOOTING,
                                                          "compat-run")
    assert booting.ip is UNSET and booting.hostname is UNSET  # absent until it is up
    assert booting.actions.restart.available is False
    assert booting.actions.restart.reason_code == InstanceActionUnavailableCode.VM_HAS_NOT_LAUNCHED
    assert booting.actions.terminate.available is True

    emu.settle()
    active = fetch(client, pid)
    assert active.status == InstanceStatus.ACTIVE
    assert isinstance(active.ip, str) and active.ip.count(".") == 3
    assert active.hostname == "trainer-1"
    assert (active.region.name, active.instance_type.name,
            active.instance_type.price_cents_per_hour) == (PublicRegionCode.US_EAST_1,
                                                           "gpu_1x_a10", 75)
    assert active.ssh_key_names == ["laptop"] and active.file_system_names == []
    assert [(t.key, t.value) for t in active.tags] == [("team", "ml")]

    listed = list_instances.sync_detailed(client=client)
    assert isinstance(listed.parsed, ListInstancesResponse200), listed.content
    assert {i.id: i.status for i in listed.parsed.data}[pid] == InstanceStatus.ACTIVE

    renamed = post_instance.sync_detailed(pid, client=client,
                                          body=InstanceModificationRequest(name="renamed"))
    assert isinstance(renamed.parsed, PostInstanceResponse200), renamed.content
    assert (renamed.parsed.data.id, renamed.parsed.data.name) == (pid, "renamed")
    assert fetch(client, pid).name == "renamed"

    restarted = restart_instance.sync_detailed(
        client=client, body=InstanceRestartRequest(instance_ids=[pid]))
    assert isinstance(restarted.parsed, RestartInstanceResponse200), restarted.content
    assert [i.id for i in restarted.parsed.data.restarted_instances] == [pid]
    emu.admin("POST", "clock", {"advance": 1.0})
    assert fetch(client, pid).status == InstanceStatus.BOOTING  # rebooting
    emu.settle()
    assert fetch(client, pid).status == InstanceStatus.ACTIVE

    gone = terminate_instance.sync_detailed(
        client=client, body=InstanceTerminateRequest(instance_ids=[pid]))
    assert isinstance(gone.parsed, TerminateInstanceResponse200), gone.content
    [terminated] = gone.parsed.data.terminated_instances
    assert (terminated.id, terminated.status) == (pid, InstanceStatus.TERMINATING)
    assert terminated.actions.terminate.reason_code == (
        InstanceActionUnavailableCode.VM_IS_TERMINATING)
    emu.admin("POST", "clock", {"advance": 6.0})
    assert fetch(client, pid).status == InstanceStatus.TERMINATED  # listed a while longer
    emu.settle()
    missing = get_instance.sync_detailed(pid, client=client)
    assert isinstance(missing.parsed, GetInstanceResponse404), missing.content
    assert pid not in {i["id"] for i in emu.instances()}


def test_every_documented_status_parses(emu: Emulator, client: AuthenticatedClient) -> None:
    pid = launch(client)
    emu.settle()
    for word in InstanceStatus:
        emu.cloud_fault("set_raw_status", id=pid, raw_status=word.value)
        assert fetch(client, pid).status is word
    emu.cloud_fault("set_raw_status", id=pid, raw_status=None)
    emu.cloud_fault("preempt", id=pid)
    assert fetch(client, pid).status is InstanceStatus.PREEMPTED
    terminate_instance.sync_detailed(client=client,
                                     body=InstanceTerminateRequest(instance_ids=[pid]))


def test_ssh_keys_add_generate_list_delete(client: AuthenticatedClient) -> None:
    added = add_ssh_key.sync_detailed(
        client=client, body=AddSSHKeyRequest(name="laptop-key", public_key=PUBLIC_KEY))
    assert isinstance(added.parsed, AddSSHKeyResponse200), added.content
    stored = added.parsed.data
    assert isinstance(stored, SSHKey) and not isinstance(stored, GeneratedSSHKey)
    assert (stored.name, stored.public_key) == ("laptop-key", PUBLIC_KEY)

    made = add_ssh_key.sync_detailed(client=client, body=AddSSHKeyRequest(name="generated"))
    assert isinstance(made.parsed, AddSSHKeyResponse200), made.content
    generated = made.parsed.data
    assert isinstance(generated, GeneratedSSHKey)
    assert generated.private_key.startswith("-----BEGIN")
    assert generated.public_key.startswith("ssh-ed25519 ")

    twice = add_ssh_key.sync_detailed(
        client=client, body=AddSSHKeyRequest(name="laptop-key", public_key=PUBLIC_KEY))
    assert twice.status_code == 400
    assert isinstance(twice.parsed, AddSSHKeyResponse400)
    assert isinstance(twice.parsed.error, ApiErrorInvalidParameters)

    listed = list_ssh_keys.sync_detailed(client=client)
    assert isinstance(listed.parsed, ListSSHKeysResponse200), listed.content
    keys = {k.name: k for k in listed.parsed.data}
    assert set(keys) >= {"laptop-key", "generated"}
    assert keys["laptop-key"].id == stored.id
    assert isinstance(keys["generated"], SSHKey)
    assert "private_key" not in keys["generated"].additional_properties  # shown once only

    deleted = delete_ssh_key.sync_detailed(stored.id, client=client)
    assert isinstance(deleted.parsed, DeleteSSHKeyResponse200), deleted.content
    assert isinstance(deleted.parsed.data, EmptyResponse)
    again = delete_ssh_key.sync_detailed(stored.id, client=client)
    assert again.status_code == 400 and isinstance(again.parsed, DeleteSSHKeyResponse400)
    after = list_ssh_keys.sync_detailed(client=client).parsed
    assert isinstance(after, ListSSHKeysResponse200)
    assert "laptop-key" not in {k.name for k in after.data}
    delete_ssh_key.sync_detailed(generated.id, client=client)


# ---- documented errors, parsed by the client's error models --------------------------------


def test_no_capacity_in_a_region_is_insufficient_capacity(emu: Emulator,
                                                          client: AuthenticatedClient) -> None:
    resp = launch_instance.sync_detailed(
        client=client, body=launch_body(region_name=PublicRegionCode.US_WEST_2))
    assert resp.status_code == 400
    assert isinstance(resp.parsed, LaunchInstanceResponse400)
    error = resp.parsed.error
    assert isinstance(error, ApiErrorInsufficientCapacity)
    assert error.code == "instance-operations/launch/insufficient-capacity"
    assert error.message == "Not enough capacity to fulfill launch request."

    emu.cloud_fault("fail_next", op="launch", error="capacity")
    again = launch_instance.sync_detailed(client=client, body=launch_body())
    assert isinstance(again.parsed, LaunchInstanceResponse400)
    assert isinstance(again.parsed.error, ApiErrorInsufficientCapacity)


def test_launch_refusals_quota_billing_and_bad_parameters(emu: Emulator,
                                                          client: AuthenticatedClient) -> None:
    before = len(emu.instances())
    emu.cloud_fault("fail_next", op="launch", error="quota")
    quota = launch_instance.sync_detailed(client=client, body=launch_body())
    assert isinstance(quota.parsed, LaunchInstanceResponse400), quota.content
    assert isinstance(quota.parsed.error, ApiErrorQuotaExceeded)
    assert quota.parsed.error.suggestion == "Contact Support to increase your quota."

    emu.cloud_fault("credit", ok=False)
    billing = launch_instance.sync_detailed(client=client, body=launch_body())
    emu.cloud_fault("credit", ok=True)
    assert billing.status_code == 403
    assert isinstance(billing.parsed, LaunchInstanceResponse403)
    assert isinstance(billing.parsed.error, ApiErrorInvalidBillingAddress)
    assert billing.parsed.error.code == "global/invalid-address"

    bad = launch_instance.sync_detailed(client=client, body=launch_body(hostname="Not_Valid"))
    assert isinstance(bad.parsed, LaunchInstanceResponse400), bad.content
    assert isinstance(bad.parsed.error, ApiErrorInvalidParameters)
    assert "hostname" in bad.parsed.error.message
    assert len(emu.instances()) == before  # nothing was made


def test_unknown_instance_is_object_does_not_exist_everywhere(client: AuthenticatedClient
                                                              ) -> None:
    got = get_instance.sync_detailed("0920582c7ff041399e34823a0be62549", client=client)
    assert isinstance(got.parsed, GetInstanceResponse404), got.content
    assert isinstance(got.parsed.error, ApiErrorInstanceNotFound)
    assert got.parsed.error.code == "global/object-does-not-exist"

    ids = InstanceRestartRequest(instance_ids=["0920582c7ff041399e34823a0be62549"])
    restarted = restart_instance.sync_detailed(client=client, body=ids)
    assert isinstance(restarted.parsed, RestartInstanceResponse404), restarted.content
    terminated = terminate_instance.sync_detailed(
        client=client, body=InstanceTerminateRequest(instance_ids=ids.instance_ids))
    assert isinstance(terminated.parsed, TerminateInstanceResponse404), terminated.content
    assert isinstance(terminated.parsed.error, ApiErrorInstanceNotFound)
    renamed = post_instance.sync_detailed("0920582c7ff041399e34823a0be62549", client=client,
                                          body=InstanceModificationRequest(name="x"))
    assert isinstance(renamed.parsed, PostInstanceResponse404), renamed.content


def test_wrong_key_is_invalid_api_key(emu: Emulator) -> None:
    with AuthenticatedClient(base_url=emu.url, token="not-the-key") as wrong:
        resp = list_instances.sync_detailed(client=wrong)
    assert resp.status_code == 401
    assert isinstance(resp.parsed, ListInstancesResponse401)
    assert isinstance(resp.parsed.error, ApiErrorUnauthorized)
    assert resp.parsed.error.code == "global/invalid-api-key"
    assert resp.parsed.error.suggestion == (
        "Check your API key or create a new one, then try again.")


def test_injected_documented_errors_parse(emu: Emulator, client: AuthenticatedClient) -> None:
    """Errors the simulated cloud has no cause for, made with an ``error`` HTTP fault."""
    emu.http_fault("error", status=403, code="global/account-inactive",
                   path_contains="/instances")
    inactive = list_instances.sync_detailed(client=client)
    assert isinstance(inactive.parsed, ListInstancesResponse403), inactive.content
    assert isinstance(inactive.parsed.error, ApiErrorAccountInactive)

    emu.http_fault("error", status=400, code="instance-operations/launch/file-system-in-wrong-"
                   "region", path_contains="/launch")
    region = launch_instance.sync_detailed(client=client, body=launch_body())
    assert isinstance(region.parsed, LaunchInstanceResponse400), region.content
    assert isinstance(region.parsed.error, ApiErrorFileSystemInWrongRegion)

    emu.http_fault("error", status=404, code="global/object-does-not-exist",
                   message="SSH key 'laptop' does not exist.", path_contains="/launch")
    missing = launch_instance.sync_detailed(client=client, body=launch_body())
    assert isinstance(missing.parsed, LaunchInstanceResponse404), missing.content
    assert isinstance(missing.parsed.error, ApiErrorLaunchResourceNotFound)
    assert missing.parsed.error.message == "SSH key 'laptop' does not exist."


def test_429_comes_back_unparsed_with_its_retry_after(emu: Emulator,
                                                      client: AuthenticatedClient) -> None:
    """The spec documents no 429: the client returns it with ``parsed`` None, headers
    intact, or raises ``UnexpectedStatus`` when told to."""
    emu.http_fault("429", retry_after=7, path_contains="/instances")
    resp = list_instances.sync_detailed(client=client)
    assert resp.status_code == 429 and resp.parsed is None
    assert resp.headers["retry-after"] == "7"

    emu.http_fault("429", retry_after=3, path_contains="/instance-types")
    with (AuthenticatedClient(base_url=emu.url, token=KEY,
                              raise_on_unexpected_status=True) as strict,
          pytest.raises(errors.UnexpectedStatus) as info):
        list_instance_types.sync_detailed(client=strict)
    assert info.value.status_code == 429
    assert list_instances.sync_detailed(client=client).status_code == 200  # used up


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_raises_unexpected_status_with_the_internal_error_body(
        emu: Emulator, status: int) -> None:
    emu.http_fault("5xx", status=status, path_contains="/instances")
    with (AuthenticatedClient(base_url=emu.url, token=KEY,
                              raise_on_unexpected_status=True) as strict,
          pytest.raises(errors.UnexpectedStatus) as info):
        list_instances.sync_detailed(client=strict)
    assert info.value.status_code == status
    body = ApiErrorInternal.from_dict(json.loads(info.value.content)["error"])
    assert (body.code, body.message) == ("global/internal-error",
                                         "An internal server error occurred.")


def test_the_conftest_emulator_fixture_serves_this_client(lambda_emulator: Emulator) -> None:
    """The shared per-test fixture works for this client too (a fresh, empty cloud)."""
    with AuthenticatedClient(base_url=lambda_emulator.url, token=KEY) as fresh:
        resp = list_instances.sync_detailed(client=fresh)
    assert isinstance(resp.parsed, ListInstancesResponse200), resp.content
    assert resp.parsed.data == []
    assert lambda_emulator.requests_served() == {"GET /api/v1/instances": 1}
