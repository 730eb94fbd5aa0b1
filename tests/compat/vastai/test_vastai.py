"""Vast.ai's official SDK (``vastai``, vast-ai/vast-cli) against ``gpufsm emulator --dialect
vastai``.

Only the synchronous clients, both on ``requests``: ``VastAI`` (the SDK the CLI is built
on; answers are the dicts its own post-processing makes) and ``SyncClient`` (answers
parsed into its ``Offer`` and ``Instance`` dataclasses). The async client fetches a
certificate from the internet, so it is not driven here. ``VAST_URL`` is read at import,
so every client is given the emulator's URL explicitly.

The client retries 429/502/503/504 itself (``retry=3``: honouring Retry-After up to 60 s,
else backing off from 0.15 s) and raises ``requests.HTTPError`` for every other error
status; a 200 with ``success: false`` it hands back as it is.
"""

from __future__ import annotations

import pytest
import requests
from vastai import SyncClient, VastAI
from vastai.data.instance import Instance, InstanceConfig
from vastai.data.offer import Offer
from vastai.data.query import Column, Query

from conftest import KEY

#: The emulator's vastai offers (gpufsm/cli/_emulator.py PROFILES["vastai"]).
ASK_4090_TX, ASK_4090_SE, ASK_3090_CA, ASK_H100 = 9000000, 9000001, 9000100, 9000200
IMAGE = "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"


@pytest.fixture
def emu(vastai_emulator):
    return vastai_emulator


@pytest.fixture
def vast(emu) -> VastAI:
    return VastAI(api_key=KEY, server_url=emu.url)


def sim_id(emu, label: str) -> str:
    """The simulated cloud's id of the instance labelled ``label`` (for cloud faults)."""
    found = [i["id"] for i in emu.instances() if i["name"] == label]
    assert len(found) == 1, emu.instances()
    return found[0]


def served(emu, method: str, prefix: str) -> int:
    return sum(n for k, n in emu.requests_served().items() if k.startswith(f"{method} {prefix}"))


def http_error(call) -> requests.HTTPError:
    with pytest.raises(requests.HTTPError) as info:
        call()
    return info.value


# ---- search ------------------------------------------------------------------------------


def test_search_offers_with_the_sdk_query_language(vast: VastAI) -> None:
    # parse_query sends numbers as strings ({"num_gpus": {"eq": "1"}}): Vast compares them.
    offers = vast.search_offers("gpu_name=RTX_4090 num_gpus=1 dph_total<=0.4",
                                order="dph_total")
    assert [o["id"] for o in offers] == [ASK_4090_TX, ASK_4090_SE]
    assert {(o["gpu_name"], o["num_gpus"], o["dph_total"]) for o in offers} == {
        ("RTX 4090", 1, 0.35)}
    assert [o["geolocation"] for o in offers] == ["Texas, US", "Stockholm, SE"]
    assert offers[0]["datacenter"] is True  # the SDK's post-processing of hosting_type

    cheap = vast.search_offers("dph_total<0.3", order="dph_total")
    assert [(o["id"], o["gpu_name"]) for o in cheap] == [(ASK_3090_CA, "RTX 3090")]
    in_sweden = vast.search_offers("gpu_name=RTX_4090 geolocation=SE")
    assert [o["id"] for o in in_sweden] == [ASK_4090_SE]
    assert vast.search_offers("gpu_name=B200") == []

    bids = vast.search_offers("gpu_name=H100_SXM", type="bid")
    assert [(o["id"], o["dph_total"], o["min_bid"]) for o in bids] == [(ASK_H100, 0.84, 0.84)]


def test_sync_client_parses_offers_and_instances_into_its_models(emu) -> None:
    client = SyncClient(api_key=KEY, vast_server=emu.url)
    query = Query.search_defaults().extend(Column("gpu_name") == "RTX 3090")
    offers = client.search(query, limit=5)
    assert [o.id for o in offers] == [ASK_3090_CA]
    offer = offers[0]
    assert isinstance(offer._data, Offer)
    assert (offer.gpu_name, offer.num_gpus, offer.dph_total, offer.geolocation) == (
        "RTX 3090", 1, 0.18, "Quebec, CA")
    assert (offer.gpu_ram, offer.rentable, offer.rented) == (24576, True, False)

    inst = offer.create_instance(InstanceConfig(image=IMAGE, label="sync-job", disk=32,
                                                env={"MODE": "train"}, onstart="nvidia-smi"))
    assert isinstance(inst._data, Instance)
    assert isinstance(inst.id, int) and inst.id > 0
    assert (inst.label, inst.image_uuid, inst.gpu_name, inst.dph_total) == (
        "sync-job", IMAGE, "RTX 3090", 0.18)
    assert (inst.actual_status, inst.intended_status, inst.cur_state) == (
        None, "running", "running")  # "being provisioned"
    assert inst.extra_env == [["MODE", "train"]] and inst.onstart == "nvidia-smi"
    assert inst.disk_space == 32.0

    emu.settle()
    (listed,) = client.show_instances()
    assert (listed.id, listed.actual_status, listed.public_ipaddr is not None) == (
        inst.id, "running", True)
    assert listed.ssh_host.endswith(".vast.ai") and isinstance(listed.ssh_port, int)

    inst.destroy()
    emu.settle()
    assert client.show_instances() == []
    assert served(emu, "GET", "/api/v1/instances/") == 3
    assert served(emu, "PUT", f"/api/v0/asks/{ASK_3090_CA}/") == 1


# ---- lifecycle ---------------------------------------------------------------------------


def test_lifecycle_create_show_stop_start_reboot_recycle_label_destroy(emu, vast: VastAI) -> None:
    made = vast.create_instance(ASK_4090_SE, image=IMAGE, label="job-1", disk=20,
                                env="-e HF_HOME=/data -p 8000:8000", onstart_cmd="echo hi")
    assert made["success"] is True and isinstance(made["new_contract"], int)
    iid = made["new_contract"]

    fresh = vast.show_instance(iid)
    assert (fresh["id"], fresh["actual_status"], fresh["intended_status"]) == (
        iid, None, "running")
    assert fresh["extra_env"] == {"HF_HOME": "/data", "-p 8000:8000": "1"}
    assert (fresh["label"], fresh["image_uuid"], fresh["onstart"]) == ("job-1", IMAGE, "echo hi")
    assert (fresh["geolocation"], fresh["dph_total"], fresh["disk_space"]) == (
        "Stockholm, SE", 0.35, 20.0)

    emu.settle()
    up = vast.show_instance(iid)
    assert (up["actual_status"], up["cur_state"], up["status_msg"]) == (
        "running", "running", "success, running")
    assert set(up["ports"]) == {"22/tcp", "8000/tcp"} and up["public_ipaddr"]
    assert up["uptime_mins"] > 0

    assert vast.stop_instance(iid) == {"success": True}
    emu.settle(1)
    stopping = vast.show_instance(iid)
    assert (stopping["actual_status"], stopping["intended_status"]) == ("running", "stopped")
    emu.settle()
    down = vast.show_instance(iid)
    assert (down["actual_status"], down["cur_state"]) == ("stopped", "stopped")
    assert "ports" not in down and down["uptime_mins"] is None

    assert vast.start_instance(iid) == {"success": True}
    emu.settle()
    assert vast.show_instance(iid)["actual_status"] == "running"

    assert vast.reboot_instance(iid) == {"success": True}
    emu.settle(1)
    assert vast.show_instance(iid)["actual_status"] == "rebooting"
    emu.settle()
    assert vast.show_instance(iid)["actual_status"] == "running"
    assert vast.recycle_instance(iid) == {"success": True}
    emu.settle(1)
    assert vast.show_instance(iid)["actual_status"] == "recycling"
    emu.settle()
    assert vast.show_instance(iid)["actual_status"] == "running"

    assert vast.label_instance(iid, "job-1-renamed") == {"success": True}
    (listed,) = vast.show_instances()
    assert (listed["id"], listed["label"], listed["actual_status"]) == (
        iid, "job-1-renamed", "running")

    assert vast.destroy_instance(iid)["success"] is True
    released = vast.show_instance(iid)
    assert (released["cur_state"], released["intended_status"]) == ("unloaded", "stopped")
    emu.settle()
    assert vast.show_instance(iid) is None  # {"instances": null}: the SDK's "no such"
    assert vast.show_instances() == []
    assert emu.instances() == []

    asked = emu.requests_served()
    assert asked[f"PUT /api/v0/asks/{ASK_4090_SE}/"] == 1
    assert asked[f"PUT /api/v0/instances/{iid}/"] == 3  # stop, start, label
    assert asked[f"PUT /api/v0/instances/reboot/{iid}/"] == 1
    assert asked[f"PUT /api/v0/instances/recycle/{iid}/"] == 1
    assert asked[f"DELETE /api/v0/instances/{iid}/"] == 1


def test_bids_and_the_clis_direct_runtype_are_accepted(emu, vast: VastAI) -> None:
    bid = vast.create_instance(ASK_H100, image=IMAGE, label="bid", bid_price=0.9)
    row = vast.show_instance(bid["new_contract"])
    assert (row["is_bid"], row["dph_total"], row["gpu_name"]) == (True, 0.9, "H100 SXM")

    # --ssh --direct: "ssh_direc ssh_proxy", two words, spelt as Vast's own CLI spells it.
    direct = vast.create_instance(ASK_4090_TX, image=IMAGE, label="direct", ssh=True,
                                  direct=True)
    assert vast.show_instance(direct["new_contract"])["image_runtype"] == "ssh_direc ssh_proxy"


def test_listing_pages_past_25(emu, vast: VastAI) -> None:
    ids = [vast.create_instance(ASK_4090_TX, image=IMAGE, label=f"n{i}")["new_contract"]
           for i in range(27)]
    rows = vast.show_instances()
    assert [r["id"] for r in rows] == sorted(ids)
    assert {r["label"] for r in rows} == {f"n{i}" for i in range(27)}
    assert served(emu, "GET", "/api/v1/instances/") == 2

    first = vast.show_instances_v1({"limit": 25, "select_filters": {}})
    assert (len(first["instances"]), first["total_instances"]) == (25, 27)
    assert first["next_token"]
    rest = vast.show_instances_v1({"limit": 25, "after_token": first["next_token"]})
    assert [r["id"] for r in rest["instances"]] == sorted(ids)[25:]
    assert rest["next_token"] is None

    only = vast.show_instances_v1({"select_filters": {"label": {"eq": "n3"}}})
    assert [r["id"] for r in only["instances"]] == [ids[3]]


# ---- what the emulator can be made to say ------------------------------------------------


def test_every_documented_status_word_reaches_the_client(emu, vast: VastAI) -> None:
    iid = vast.create_instance(ASK_4090_TX, image=IMAGE, label="words")["new_contract"]
    sid = sim_id(emu, "words")
    for word in ("loading", "running", "stopped", "frozen", "exited", "rebooting", "unknown",
                 "offline", "recycling", "scheduling", "created", "restarting"):
        emu.cloud_fault("set_raw_status", id=sid, raw_status=word)
        assert vast.show_instance(iid)["actual_status"] == word
        (row,) = vast.show_instances()
        assert row["actual_status"] == word
    emu.cloud_fault("set_raw_status", id=sid, raw_status=None)
    assert vast.show_instance(iid)["actual_status"] is None  # provisioning again


#: NOTES.md "Errors": every documented ``error`` code with the status it comes with.
DOCUMENTED_ERRORS = (
    ("invalid_args", 400), ("invalid_price", 400), ("no_ssh_key_for_vm", 400),
    ("invalid_args", 403), ("no_such_ask", 404), ("no_such_ask", 410),
    ("auth_error", 401), ("not_found", 404), ("invalid_request", 400),
    ("invalid_token", 400), ("rate_limit_exceeded", 429), ("insufficient_credit", 400),
)


def test_documented_errors_raise_http_error_with_vasts_body(emu) -> None:
    vast = VastAI(api_key=KEY, server_url=emu.url, retry=1)  # one try: no 429 retry here
    for code, status in DOCUMENTED_ERRORS:
        emu.http_fault("error", code=code, status=status, path_contains="/asks/")
        err = http_error(lambda: vast.create_instance(ASK_4090_TX, image=IMAGE))
        assert err.response.status_code == status, code
        body = err.response.json()
        assert (body["success"], body["error"]) == (False, code)
        assert body["msg"], code
    assert served(emu, "PUT", "/api/v0/asks/") == len(DOCUMENTED_ERRORS)


# ---- faults ------------------------------------------------------------------------------


def test_429_and_5xx_follow_the_clients_retry_rules(emu, vast: VastAI) -> None:
    # A Retry-After within a minute is waited out.
    emu.http_fault("429", times=2, retry_after=0.05, path_contains="/api/v1/instances")
    assert vast.show_instances() == []
    assert served(emu, "GET", "/api/v1/instances/") == 3  # two 429s, then the page

    # Vast's own 429 has no Retry-After: backoff from 0.15 s, then the last answer raised.
    emu.http_fault("429", times=3, path_contains="/bundles/")
    err = http_error(lambda: vast.search_offers("gpu_name=RTX_4090"))
    assert err.response.status_code == 429
    assert "too frequent" in err.response.text
    assert served(emu, "POST", "/api/v0/bundles/") == 3  # retry=3 attempts in all

    # A wait of over a minute is handed back at once.
    emu.http_fault("429", times=3, retry_after=120, path_contains="/instances/")
    err = http_error(lambda: vast.show_instance(31000001))
    assert err.response.status_code == 429
    assert served(emu, "GET", "/api/v0/instances/") == 1

    # 503 is in its retry set, 500 is not.
    emu.http_fault("5xx", status=503, path_contains="/bundles/")
    assert [o["id"] for o in vast.search_offers("gpu_name=RTX_3090")] == [ASK_3090_CA]
    assert served(emu, "POST", "/api/v0/bundles/") == 5
    emu.http_fault("5xx", status=500, path_contains="/bundles/")
    err = http_error(lambda: vast.search_offers("gpu_name=RTX_3090"))
    assert err.response.status_code == 500
    assert served(emu, "POST", "/api/v0/bundles/") == 6


def test_a_wrong_key_is_a_401_auth_error(emu) -> None:
    wrong = VastAI(api_key="not-the-key", server_url=emu.url)
    err = http_error(wrong.show_instances)
    assert err.response.status_code == 401
    assert err.response.json() == {"success": False, "error": "auth_error",
                                   "msg": "Invalid user key"}
    err = http_error(lambda: SyncClient(api_key="nope", vast_server=emu.url).search(Query({})))
    assert err.response.status_code == 401


def test_cloud_refusals_reach_the_client(emu, vast: VastAI) -> None:
    emu.cloud_fault("fail_next", op="launch", error="capacity")
    err = http_error(lambda: vast.create_instance(ASK_4090_TX, image=IMAGE))
    assert err.response.status_code == 410
    assert err.response.json()["error"] == "no_such_ask"

    emu.cloud_fault("credit", ok=False)
    err = http_error(lambda: vast.create_instance(ASK_4090_TX, image=IMAGE))
    assert err.response.status_code == 400
    assert "lacks credit" in err.response.json()["msg"]
    emu.cloud_fault("credit", ok=True)

    err = http_error(lambda: vast.create_instance(123, image=IMAGE))  # no such ask
    assert err.response.status_code == 404 and "no_such_ask" in err.response.json()["msg"]
    err = http_error(lambda: vast.destroy_instance(424242))
    assert (err.response.status_code, err.response.json()["error"]) == (404, "not_found")

    iid = vast.create_instance(ASK_4090_TX, image=IMAGE, label="refuse")["new_contract"]
    emu.settle()
    emu.cloud_fault("fail_next", op="stop", error="invalid")
    refused = vast.stop_instance(iid)  # a refusal on a 200, handed back as it is
    assert refused["success"] is False and "cannot set state stopped" in refused["msg"]
    assert vast.show_instance(iid)["intended_status"] == "running"
