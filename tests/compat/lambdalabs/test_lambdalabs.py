"""The community client lambdalabs-python (``LambdaLabsClient``, on requests) against
``gpufsm emulator --dialect lambda``.

The client builds its own objects (``Instance``, ``InstanceType``, ``SSHKey``) by indexing
the answers (``['data']``, ``['instance_type']['specs']['vcpus']`` …), so a missing field
is a KeyError here. Restart and terminate hand back the raw ``Instance`` dicts. Every
status >= 400 goes through ``handle_error``, which ``json.loads`` the body and raises
``APIException``; it reads ``code`` and ``message`` from the top level of the body, where
Lambda's documented envelope has neither (they sit under ``error``), so the exception
carries None for both, whatever the error. A body that is not JSON (the emulator's
status-only 429, as the spec documents none) escapes as ``json.JSONDecodeError``. The
client has no retry.

One emulator serves the module; each test clears the faults and looks only at its own
instances.
"""

from __future__ import annotations

import json

import pytest
from emulator import Emulator
from lambdalabs import LambdaLabsClient
from lambdalabs.exceptions import APIException

from conftest import KEY

DIALECT = "lambda"

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICN+lJwsONkwrdsSnQsu1ydUkIuIg5oOC compat"


@pytest.fixture
def client(emu: Emulator) -> LambdaLabsClient:
    return LambdaLabsClient(KEY, base_url=emu.url + "/api/v1")


def test_instance_types(emu: Emulator, client: LambdaLabsClient) -> None:
    types = {t.name: t for t in client.instance_types.get()}
    assert set(types) == set(emu.provider_json("/api/v1/instance-types", KEY)["data"])
    assert {"gpu_1x_a10", "gpu_1x_h100_pcie", "gpu_8x_h100_sxm5"} <= set(types)
    a10 = types["gpu_1x_a10"]
    assert (a10.price_cents_per_hour, a10.description, a10.vcpus, a10.memory_gib,
            a10.storage_gib) == (75, "1x A10 (24 GB PCIe)", 30, 200, 1400)
    assert [r["name"] for r in a10.regions_with_capacity_available] == ["us-east-1",
                                                                        "us-west-1"]
    assert types["gpu_8x_h100_sxm5"].regions_with_capacity_available == []


def test_ssh_keys_then_launch_get_list_restart_terminate(emu: Emulator,
                                                         client: LambdaLabsClient) -> None:
    key = client.ssh_keys.add("laptop", PUBLIC_KEY)
    assert (key.name, key.public_key, key.private_key) == ("laptop", PUBLIC_KEY, None)
    generated = client.ssh_keys.add("generated")
    assert generated.private_key.startswith("-----BEGIN")
    assert {k.name: k.id for k in client.ssh_keys.get()} == {"laptop": key.id,
                                                             "generated": generated.id}

    # The client always sends quantity (1) and file_system_names, as Lambda's docs did.
    [pid] = client.instances.launch("us-east-1", "gpu_1x_a10", ["laptop"], name="compat")
    booting = client.instances.get_by_id(pid)
    assert (booting.id, booting.status, booting.ip, booting.hostname) == (
        pid, "booting", None, None)
    assert booting.ssh_key_names == ["laptop"] and booting.file_system_names == []
    assert (booting.instance_type.name, booting.instance_type.price_cents_per_hour) == (
        "gpu_1x_a10", 75)

    emu.settle()
    listed = {i.id: i for i in client.instances.get()}
    assert listed[pid].status == "active"
    assert listed[pid].ip is not None and listed[pid].ip.count(".") == 3

    restarted = client.instances.restart(pid)
    assert [(i["id"], i["status"]) for i in restarted] == [(pid, "active")]
    emu.admin("POST", "clock", {"advance": 1.0})
    assert client.instances.get_by_id(pid).status == "booting"
    emu.settle()

    terminated = client.instances.terminate([pid])
    assert [(i["id"], i["status"]) for i in terminated] == [(pid, "terminating")]
    emu.settle()
    with pytest.raises(APIException):  # 404 global/object-does-not-exist
        client.instances.get_by_id(pid)
    assert pid not in {i.id for i in client.instances.get()}

    assert json.loads(client.ssh_keys.delete(key.id)) == {"data": {}}  # raw text back
    assert [k.name for k in client.ssh_keys.get()] == ["generated"]
    client.ssh_keys.delete(generated.id)


def test_documented_errors_raise_api_exception_without_their_code(
        emu: Emulator, client: LambdaLabsClient) -> None:
    before = len(emu.instances())
    with pytest.raises(APIException) as capacity:  # 400 insufficient-capacity
        client.instances.launch("us-west-2", "gpu_1x_a10", ["laptop"])
    assert (capacity.value.code, capacity.value.message) == (None, None)
    with pytest.raises(APIException):  # 400 invalid-parameters: 1.8.3 has no quantity > 1
        client.instances.launch("us-east-1", "gpu_1x_a10", ["laptop"], quantity=2)
    emu.cloud_fault("credit", ok=False)
    with pytest.raises(APIException):  # 403 invalid-address
        client.instances.launch("us-east-1", "gpu_1x_a10", ["laptop"])
    emu.cloud_fault("credit", ok=True)
    assert len(emu.instances()) == before
    with pytest.raises(APIException):  # 404 object-does-not-exist
        client.instances.terminate("0920582c7ff041399e34823a0be62549")
    with pytest.raises(APIException):
        client.instances.restart("0920582c7ff041399e34823a0be62549")
    assert emu.requests_served()["POST /api/v1/instance-operations/terminate"] >= 1


def test_wrong_key_raises_api_exception(emu: Emulator) -> None:
    wrong = LambdaLabsClient("not-the-key", base_url=emu.url + "/api/v1")
    with pytest.raises(APIException):
        wrong.instances.get()
    served = emu.requests_served()["GET /api/v1/instances"]
    with pytest.raises(APIException):
        wrong.instance_types.get()
    assert emu.requests_served()["GET /api/v1/instances"] == served  # no retry


def test_5xx_raises_api_exception_once(emu: Emulator, client: LambdaLabsClient) -> None:
    emu.http_fault("5xx", status=503, path_contains="/instance-types")
    with pytest.raises(APIException):
        client.instance_types.get()
    listed = emu.provider_json("/api/v1/instance-types", KEY)["data"]
    assert len(client.instance_types.get()) == len(listed)  # the fault was used up by one


def test_429_status_only_body_escapes_as_a_json_error(emu: Emulator,
                                                      client: LambdaLabsClient) -> None:
    emu.http_fault("429", retry_after=5, path_contains="/instances")
    served = emu.requests_served().get("GET /api/v1/instances", 0)
    with pytest.raises(json.JSONDecodeError):
        client.instances.get()
    assert emu.requests_served()["GET /api/v1/instances"] == served + 1  # no retry
    assert client.instances.get() is not None
