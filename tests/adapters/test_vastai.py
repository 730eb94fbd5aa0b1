"""The Vast.ai adapter against its loopback emulator, over real HTTP.

Grouped by behaviour: lifecycle, statuses, errors, faults and retries, pagination, spec
validation, secrets. Every exchange with the emulator is checked against the official
openapi.yaml (tests/fixtures/provider-api/vastai/) by a server hook, in both directions:
the adapter's request bodies and the emulator's responses.

One emulator server serves the whole module (a ThreadingHTTPServer takes up to half a
second to shut down); each test gets a fresh SimulatedCloud, dialect, hooks and counts.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator

from gpufsm.adapters import (
    InstanceTypeOffer,
    LaunchRequest,
    RetryPolicy,
    ownership_tag,
)
from gpufsm.adapters._vastai_models import VastInstance
from gpufsm.adapters.vastai import (
    NULL_STATUS,
    VAST_ERRORS,
    VAST_STATUSES,
    VastAdapter,
    map_vast_error,
    normalize_gpu_name,
    to_provider_instance,
    vast_state,
)
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    RateLimited,
    ValidationError,
)
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec
from gpufsm.testing import FakeClock, SimInstance, SimulatedCloud
from gpufsm.testing.emulators import (
    EmulatorRequest,
    EmulatorResponse,
    EmulatorServer,
    HttpFault,
)
from gpufsm.testing.emulators.vastai import VastDialect

S = InstanceState
SPEC_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "provider-api" / "vastai"
KEY = "vast-test-key-7c1e0b5d9a"  # distinctive, so a leak is easy to grep for

TYPES = (
    InstanceTypeOffer("vastai", "RTX_4090", 0.35, ("Texas, US", "Stockholm, SE"), 1,
                      "RTX 4090 (24 GB)"),
    InstanceTypeOffer("vastai", "2x_RTX_4090", 0.69, ("Texas, US",), 2, "RTX 4090 (24 GB)"),
    InstanceTypeOffer("vastai", "RTX_3090", 0.18, ("Quebec, CA",), 1, "RTX 3090 (24 GB)"),
    InstanceTypeOffer("vastai", "H100_SXM", 2.10, ("Oregon, US",), 1, "H100 SXM (80 GB)"),
    InstanceTypeOffer("vastai", "A100_PCIE", 1.10, (), 1, "A100 PCIE (40 GB)"),  # sold out
)

#: NOTES.md "Status vocabulary" (actual_status, plus the words seen elsewhere), and what
#: each must mean. This list is the contract: the table may not drop or add a word.
NOTES_STATUSES: dict[str | None, InstanceState] = {
    None: S.CREATED,  # "being provisioned"
    "loading": S.STARTING,
    "running": S.RUNNING,
    "stopped": S.STOPPED,
    "frozen": S.RUNNING,  # paused, but GPU charges apply
    "exited": S.FAILED,  # on its own; with intent running it is starting (see vast_state)
    "rebooting": S.STARTING,
    "unknown": S.FAILED,
    "offline": S.FAILED,
    "recycling": S.STARTING,
    "scheduling": S.STARTING,
    "created": S.CREATED,
    "restarting": S.STARTING,
}

#: The runtypes Vast's own CLI/SDK (vastai 1.9 ``resolve_runtype``) send beyond the enum.
VAST_CLI_RUNTYPES = ("ssh_direc ssh_proxy", "jupyter_direc ssh_direc ssh_proxy",
                     "jupyter_proxy ssh_proxy")

#: NOTES.md "Errors": every code, the HTTP status it comes with, and the class it must be.
NOTES_ERRORS: dict[str, tuple[int, type[ProviderError]]] = {
    "invalid_args": (400, InvalidRequest),
    "invalid_price": (400, InvalidRequest),
    "no_ssh_key_for_vm": (400, InvalidRequest),
    "no_such_ask": (410, InsufficientCapacity),
    "auth_error": (401, AuthError),
    "not_found": (404, ProviderNotFound),
    "invalid_request": (400, InvalidRequest),
    "invalid_token": (400, InvalidRequest),
    "rate_limit_exceeded": (429, RateLimited),
    "insufficient_credit": (400, InsufficientCredit),
}


# ---- the OpenAPI check -------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The official spec, with its three self-contradictions resolved as its text says.

    * ``Instance.ports`` is typed "array of integers" for ``GET /instances/{id}``, but the
      v1 listing, every client and the docs give the docker map ``{"22/tcp": [{HostIp,
      HostPort}]}``: the v0 definition is replaced by the v1 one.
    * ``POST /bundles`` ``type`` enumerates ``ondemand`` while the request example in the
      same spec and the docs send ``on-demand``: both are accepted.
    * ``POST /bundles`` ``order`` puts ``minItems/maxItems: 2`` on the outer list though
      its description says "each entry should contain two elements": moved inside.
    * ``Instance.extra_env`` is "array of strings" for ``GET /instances/{id}``, but the v1
      listing's is ``[[key, value], ...]``, and Vast's own SDK reads both endpoints' as
      such pairs (``{k: v for k, v in extra_env}``): the v1 definition is used for both.
    * ``PUT /asks/{id}`` ``runtype`` enumerates single words, but Vast's own CLI and SDK
      send combinations for direct connections ("ssh_direc ssh_proxy", and the v1
      example ``image_runtype`` "ssh ssh_direc ssh_proxy"): those combinations are added.
    """
    doc: dict[str, Any] = yaml.safe_load((SPEC_DIR / "openapi.yaml").read_text())
    doc = copy.deepcopy(doc)
    v1_item = (doc["paths"]["/api/v1/instances"]["get"]["responses"]["200"]["content"]
               ["application/json"]["schema"]["properties"]["instances"]["items"])
    doc["components"]["schemas"]["Instance"]["properties"]["ports"] = copy.deepcopy(
        v1_item["properties"]["ports"])
    doc["components"]["schemas"]["Instance"]["properties"]["extra_env"] = copy.deepcopy(
        v1_item["properties"]["extra_env"])
    runtype = (doc["paths"]["/api/v0/asks/{id}"]["put"]["requestBody"]["content"]
               ["application/json"]["schema"]["properties"]["runtype"])
    runtype["enum"] = [*runtype["enum"], *VAST_CLI_RUNTYPES]
    search = (doc["paths"]["/api/v0/bundles"]["post"]["requestBody"]["content"]
              ["application/json"]["schema"]["properties"])
    search["type"]["enum"] = [*search["type"]["enum"], "on-demand"]
    order = search["order"]
    order.pop("minItems", None)
    order.pop("maxItems", None)
    order["items"]["minItems"] = order["items"]["maxItems"] = 2
    return doc


_SPEC_ROUTES = (
    (re.compile(r"^/api/v0/bundles/$"), "/api/v0/bundles"),
    (re.compile(r"^/api/v0/asks/\d+/$"), "/api/v0/asks/{id}"),
    (re.compile(r"^/api/v1/instances/?$"), "/api/v1/instances"),
    (re.compile(r"^/api/v0/instances/reboot/\d+/$"), "/api/v0/instances/reboot/{id}"),
    (re.compile(r"^/api/v0/instances/recycle/\d+/$"), "/api/v0/instances/recycle/{id}"),
    (re.compile(r"^/api/v0/instances/\d+/$"), "/api/v0/instances/{id}"),
)


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # The spec's $refs are "#/components/...": give each sub-schema the components.
    return Draft202012Validator({**schema, "components": doc["components"]})


@dataclass
class SpecCheck:
    """Server hook: validate each exchange against openapi.yaml; collect, never raise.

    What the spec does not describe is counted in ``unspecified`` instead: the legacy
    ``GET /api/v0/instances/`` listing, ``{"instances": null}`` for a missing instance,
    plain-text 429/5xx bodies, and statuses the spec omits (show-instance 404, 504).
    """

    doc: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    validated: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    unspecified: Counter[str] = field(default_factory=Counter)

    def __call__(self, request: EmulatorRequest, response: EmulatorResponse) -> None:
        try:
            self._check(request, response)
        except Exception as exc:  # a hook must not kill the server thread
            self.errors.append(f"{request.method} {request.path}: check crashed: {exc!r}")

    def _check(self, request: EmulatorRequest, response: EmulatorResponse) -> None:
        spec_path = next((p for rx, p in _SPEC_ROUTES if rx.match(request.path)), None)
        method = request.method.lower()
        op = self.doc["paths"].get(spec_path or "", {}).get(method)
        where = f"{request.method} {request.path}"
        if spec_path is None or op is None:
            self.unspecified[where] += 1
            return
        if request.body:
            schema = (op.get("requestBody", {}).get("content", {})
                      .get("application/json", {}).get("schema"))
            if schema is not None:
                self._validate(schema, json.loads(request.body), f"{where} request")
                self.validated[(spec_path, method, "request")] += 1
        documented = op["responses"].get(str(response.status))
        schema = ((documented or {}).get("content", {}).get("application/json", {})
                  .get("schema"))
        if schema is None or not isinstance(response.body, dict):
            self.unspecified[f"{where} {response.status}"] += 1
            return
        if spec_path == "/api/v0/instances/{id}" and method == "get" and (
                response.body.get("instances") is None):
            self.unspecified[f"{where} instances:null"] += 1
            return
        self._validate(schema, response.body, f"{where} {response.status}")
        self.validated[(spec_path, method, str(response.status))] += 1

    def _validate(self, schema: dict[str, Any], instance: Any, where: str) -> None:
        for error in _validator(self.doc, schema).iter_errors(instance):
            self.errors.append(f"{where}: {error.json_path}: {error.message}")


# ---- fixtures ------------------------------------------------------------------------


@dataclass
class Env:
    clock: FakeClock
    cloud: SimulatedCloud
    dialect: VastDialect
    server: EmulatorServer
    adapter: VastAdapter
    check: SpecCheck
    exchanges: list[tuple[EmulatorRequest, EmulatorResponse]]

    def count(self, method: str, prefix: str) -> int:
        return sum(n for k, n in self.server.counts.items() if k.startswith(f"{method} {prefix}"))

    def bodies(self, method: str, prefix: str) -> list[Any]:
        return [json.loads(r.body) for r, _ in self.exchanges
                if r.method == method and r.path.startswith(prefix) and r.body]

    def sim(self, pid: str) -> SimInstance:
        """The sim's record of Vast instance ``pid``."""
        return self.cloud.instance(self.dialect.sim_id(pid))

    def hook(self, fn: Callable[[EmulatorRequest, EmulatorResponse], None]) -> None:
        self.server.hooks.append(fn)


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    first = VastDialect(SimulatedCloud("vastai", clock=FakeClock()))
    with EmulatorServer(first, api_key=KEY) as srv:
        yield srv


@pytest.fixture
def env(server: EmulatorServer, openapi: dict[str, Any]) -> Iterator[Env]:
    clock = FakeClock()
    cloud = SimulatedCloud("vastai", clock=clock, instance_types=TYPES, seed=7)
    dialect = VastDialect(cloud)
    check = SpecCheck(openapi)
    exchanges: list[tuple[EmulatorRequest, EmulatorResponse]] = []
    server.dialect = dialect
    server.clear_faults()
    server.counts = Counter()
    server.hooks[:] = [check, lambda rq, rs: exchanges.append((rq, rs))]
    adapter = VastAdapter(KEY, base_url=server.url, rate_limits={}, clock=clock,
                          retry=RetryPolicy(attempts=4, initial=0.5, max_backoff=4.0))
    try:
        yield Env(clock, cloud, dialect, server, adapter, check, exchanges)
    finally:
        adapter.close()
        server.hooks.clear()
        server.clear_faults()
    assert not check.errors, "\n".join(check.errors)


def spec(**kw: Any) -> InstanceSpec:
    base: dict[str, Any] = {"provider": "vastai", "instance_type": "RTX_4090",
                            "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
                            "name": "job"}
    base.update(kw)
    return InstanceSpec(**base)


def request_for(s: InstanceSpec, token: str = "tok1") -> LaunchRequest:
    return LaunchRequest(spec=s, tag=ownership_tag(token), client_token=token)


def launch(env: Env, token: str = "tok1", **kw: Any) -> str:
    return env.adapter.launch(request_for(spec(**kw), token))


def get(env: Env, pid: str) -> Any:
    inst = env.adapter.get(pid)
    assert inst is not None
    return inst


# ---- lifecycle -------------------------------------------------------------------------


def test_lifecycle_launch_stop_start_restart_terminate(env: Env) -> None:
    pid = launch(env)
    assert pid.isdigit()
    first = get(env, pid)
    assert first.state in (S.CREATED, S.STARTING)
    assert first.tag == ownership_tag("tok1") and first.name == "gpufsm-tok1/job"

    env.cloud.settle(120)
    running = get(env, pid)
    assert running.state is S.RUNNING and running.raw_status == "running"
    assert running.ip and running.ssh_port and running.instance_type == "RTX 4090"
    assert running.price_per_hour == pytest.approx(0.35)
    assert running.region == "Texas, US"

    assert env.adapter.capabilities.stop
    env.adapter.stop(pid)
    env.cloud.settle(0.6)
    assert get(env, pid).state is S.STOPPING  # running, intended_status stopped
    env.cloud.settle(60)
    assert get(env, pid).state is S.STOPPED

    env.adapter.start(pid)
    env.cloud.settle(1.0)
    assert get(env, pid).state is S.STARTING
    env.cloud.settle(60)
    assert get(env, pid).state is S.RUNNING

    assert env.adapter.capabilities.restart
    env.adapter.restart(pid)
    env.cloud.settle(0.6)
    rebooting = get(env, pid)
    assert (rebooting.raw_status, rebooting.state) == ("rebooting", S.STARTING)
    env.cloud.settle(60)
    assert get(env, pid).state is S.RUNNING

    env.adapter.terminate(pid)
    gone = get(env, pid)  # still shown, its contract released: cur_state "unloaded"
    assert (gone.raw_status, gone.state) == ("unloaded", S.TERMINATED)
    env.cloud.settle(3600)
    assert env.adapter.get(pid) is None
    env.adapter.terminate(pid)  # idempotent: 404 not_found is success
    assert pid not in {i.provider_instance_id for i in env.adapter.list_instances()}

    for key in [("/api/v0/bundles", "post", "request"), ("/api/v0/bundles", "post", "200"),
                ("/api/v0/asks/{id}", "put", "request"), ("/api/v0/asks/{id}", "put", "200"),
                ("/api/v0/instances/{id}", "get", "200"),
                ("/api/v0/instances/{id}", "put", "request"),
                ("/api/v0/instances/{id}", "put", "200"),
                ("/api/v0/instances/{id}", "delete", "200"),
                ("/api/v0/instances/{id}", "delete", "404"),
                ("/api/v0/instances/reboot/{id}", "put", "200"),
                ("/api/v1/instances", "get", "200")]:
        assert env.check.validated[key], f"not validated against the spec: {key}"


def test_terminate_accepts_an_empty_200(env: Env) -> None:
    pid = launch(env)
    env.dialect.empty_destroy_body = True
    env.adapter.terminate(pid)
    assert get(env, pid).state is S.TERMINATED


def test_list_marks_ours_by_label_and_not_others(env: Env) -> None:
    pid = launch(env, name=None)
    stranger = env.cloud.spawn_untracked(None, instance_type="RTX_4090")
    orphan = env.cloud.spawn_untracked(ownership_tag("lost"), instance_type="RTX_3090")
    listed = {i.provider_instance_id: i for i in env.adapter.list_instances()}
    assert len(listed) == 3
    assert listed[pid].tag == ownership_tag("tok1") and listed[pid].name == "gpufsm-tok1"
    by_sim = {env.sim(p).id: i for p, i in listed.items()}
    assert by_sim[stranger].tag is None
    assert by_sim[orphan].tag == ownership_tag("lost")  # ours, from a crashed launch


def test_launch_sends_vast_shaped_search_and_create(env: Env) -> None:
    s = spec(instance_type="RTX_4090", region="US", disk_gb=50, max_price_per_hour=0.5,
             env={"HF_HOME": "/data/hf"}, ports=(8000,), command="echo hi",
             options={"runtype": "ssh_direct"})
    pid = env.adapter.launch(request_for(s))
    [search] = env.bodies("POST", "/api/v0/bundles/")
    assert search["gpu_name"] == {"eq": "RTX 4090"}  # underscores read as spaces
    assert search["num_gpus"] == {"eq": 1}
    assert search["dph_total"] == {"lte": 0.5}
    assert search["geolocation"] == {"in": ["US"]}
    assert search["disk_space"] == {"gte": 50}
    assert search["type"] == "on-demand"
    assert search["order"][0] == ["dph_total", "asc"]
    [create] = env.bodies("PUT", "/api/v0/asks/")
    assert create == {
        "image": s.image, "label": "gpufsm-tok1/job", "runtype": "ssh_direct", "disk": 50,
        "env": "-e HF_HOME=/data/hf -p 8000:8000", "onstart": "echo hi",
        "cancel_unavail": True,
    }
    env.cloud.settle(120)
    inst = get(env, pid)
    assert inst.region == "Texas, US"  # Stockholm, SE is not in "US"


def test_an_explicit_offer_is_still_held_to_the_spec(env: Env) -> None:
    """``options.offer_id`` skipped the search, so type, count, region and the price cap
    were silently ignored for it (issue 9 item 8). It is searched for by id now."""
    offers = {(o.name, o.gpus): o for o in env.adapter.instance_types()}
    offer = offers[("RTX 3090", 1)]
    assert offer.offer_id is not None
    pid = launch(env, instance_type="RTX 3090", options={"offer_id": offer.offer_id})
    search = env.bodies("POST", "/api/v0/bundles/")[-1]
    assert search["id"] == {"eq": int(offer.offer_id)}
    assert search["gpu_name"] == {"eq": "RTX 3090"}
    assert env.count("PUT", f"/api/v0/asks/{offer.offer_id}/") == 1
    assert get(env, pid).region == "Quebec, CA"
    for mismatch in ({"instance_type": "RTX 4090"}, {"max_price_per_hour": 0.1},
                     {"region": "US"}):
        with pytest.raises(InsufficientCapacity, match=f"offer {offer.offer_id} is not"):
            launch(env, **{"instance_type": "RTX 3090", "options": {"offer_id": offer.offer_id},
                           **mismatch})
    assert env.count("PUT", "/api/v0/asks/") == 1


def test_interruptible_launch_bids(env: Env) -> None:
    pid = launch(env, options={"price": 0.2})
    [search] = env.bodies("POST", "/api/v0/bundles/")
    [create] = env.bodies("PUT", "/api/v0/asks/")
    assert search["type"] == "bid" and create["price"] == 0.2
    assert get(env, pid).price_per_hour == pytest.approx(0.2)


def test_the_listing_is_asked_for_with_the_slash_vasts_sdk_uses(env: Env) -> None:
    """``GET /api/v1/instances/``, as Vast's own SDK (vastai 1.9) pages it. The spec's
    path keys drop every trailing slash, and the v0 paths are known to need theirs; the
    emulator served only the slashless form, and the adapter asked for just that one."""
    launch(env)
    assert len(env.adapter.list_instances()) == 1
    paths = [rq.path for rq, _ in env.exchanges if rq.path.startswith("/api/v1/")]
    assert paths == ["/api/v1/instances/"]


def test_the_clis_direct_runtypes_are_accepted(env: Env) -> None:
    """Vast's own CLI and SDK ask for direct SSH/Jupyter with several words, spelt
    ``ssh_direc``; refusing them (the enum alone) refused what every CLI user sends."""
    for n, runtype in enumerate(VAST_CLI_RUNTYPES):
        launch(env, token=f"rt{n}", options={"runtype": runtype})
    assert [c["runtype"] for c in env.bodies("PUT", "/api/v0/asks/")] == list(
        VAST_CLI_RUNTYPES)
    for bad in ("ssh_direc bogus", " ", "ssh,ssh_proxy"):
        with pytest.raises(ValidationError, match=r"options\.runtype"):
            launch(env, token="bad", options={"runtype": bad})


def test_the_emulator_takes_what_vasts_own_sdk_sends(env: Env) -> None:
    """Found by tests/compat/vastai: the official SDK sends filter values as strings,
    ``env`` as an object, nulls for unset fields, accepts an ask it never searched for,
    and reads ``extra_env`` back as ``[key, value]`` pairs."""
    body = {"client_id": "me", "image": "img", "env": {"HF_HOME": "/d", "-p 8000:8000": "1"},
            "price": None, "disk": 10, "label": "sdk", "extra": None, "onstart": None,
            "runtype": "ssh_direc ssh_proxy"}
    with httpx.Client(base_url=env.server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as raw:
        made = raw.put("/api/v0/asks/9000000/", json=body)  # no search before it
        assert made.status_code == 200, made.text
        vid = made.json()["new_contract"]
        shown = raw.get(f"/api/v0/instances/{vid}/", params={"owner": "me"}).json()
        assert shown["instances"]["extra_env"] == [["HF_HOME", "/d"], ["-p 8000:8000", "1"]]
        env.cloud.settle(120)
        listed = raw.get("/api/v1/instances/", params={"limit": 25}).json()
        assert [i["id"] for i in listed["instances"]] == [vid]
        assert set(listed["instances"][0]["ports"]) == {"22/tcp", "8000/tcp"}
        offers = raw.post("/api/v0/bundles/", json={
            "num_gpus": {"eq": "1"}, "dph_total": {"lte": "0.3"}, "rentable": {"eq": "true"},
            "verified": {"eq": True}, "order": [["score", "desc"]], "type": "on-demand",
            "allocated_storage": 5.0}).json()["offers"]
    assert [(o["id"], o["gpu_name"]) for o in offers] == [(9000200, "RTX 3090")]
    # The SDK's body is not the spec's shape (an env object, nulls): the check says so.
    assert any("$.env" in e for e in env.check.errors)
    env.check.errors.clear()


def test_instance_types_are_the_cheapest_offer_per_gpu_and_region(env: Env) -> None:
    offers = {(o.name, o.gpus, o.regions): o for o in env.adapter.instance_types()}
    assert set(offers) == {
        ("RTX 4090", 1, ("Stockholm, SE",)), ("RTX 4090", 1, ("Texas, US",)),
        ("RTX 4090", 2, ("Texas, US",)), ("RTX 3090", 1, ("Quebec, CA",)),
        ("H100 SXM", 1, ("Oregon, US",))}
    texas, stockholm = (offers[("RTX 4090", 1, (r,))] for r in ("Texas, US", "Stockholm, SE"))
    for one in (texas, stockholm):
        assert one.price_per_hour == pytest.approx(0.35) and one.available
        assert one.offer_id and one.provider == "vastai"
        assert one.spot_price_per_hour is not None and one.spot_price_per_hour < 0.35
    assert texas.offer_id != stockholm.offer_id  # each region's own ask


def test_gpu_names_normalise() -> None:
    assert normalize_gpu_name("RTX_4090") == normalize_gpu_name("RTX 4090") == "RTX 4090"
    assert normalize_gpu_name(" H100_SXM ") == "H100 SXM"


# ---- statuses ------------------------------------------------------------------------


def test_the_status_table_is_exactly_the_notes_vocabulary() -> None:
    expected = {(w if w is not None else NULL_STATUS): s for w, s in NOTES_STATUSES.items()}
    assert dict(VAST_STATUSES) == expected


@pytest.mark.parametrize(("word", "state"), list(NOTES_STATUSES.items()))
def test_every_documented_status_word_maps(word: str | None, state: InstanceState) -> None:
    assert vast_state(word)[1] is state


@pytest.mark.parametrize(("actual", "intended", "cur", "raw", "state"), [
    ("running", "stopped", "running", "running (intended stopped)", S.STOPPING),
    ("loading", "stopped", "running", "loading (intended stopped)", S.STOPPING),
    ("frozen", "stopped", "running", "frozen (intended stopped)", S.STOPPING),
    ("exited", "stopped", "stopped", "exited (stopped)", S.STOPPED),  # a stop, not a crash
    ("exited", "running", "stopped", "exited (stopped)", S.STOPPED),  # start still pending
    # Issue 9 item 12: right after a start Vast still shows the stopped container exited
    # while intent and contract say running. That is a start, never a failure to destroy.
    ("exited", "running", "running", "exited (intended running)", S.STARTING),
    ("exited", "running", None, "exited (intended running)", S.STARTING),
    ("EXITED", "Running", "running", "EXITED (intended running)", S.STARTING),
    ("exited", None, None, "exited", S.FAILED),  # nobody intends it to run: it died
    ("exited", "frozen", "running", "exited", S.FAILED),
    ("stopped", "running", "stopped", "stopped", S.STOPPED),
    ("running", "running", "unloaded", "unloaded", S.TERMINATED),  # released on destroy
    ("zz-new", "running", "unloaded", "unloaded", S.TERMINATED),
    ("zz-new", "stopped", "running", "zz-new", None),
    ("RUNNING", None, None, "RUNNING", S.RUNNING),  # case is not a new word
])
def test_intent_and_contract_refine_the_status(actual: str, intended: str | None,
                                               cur: str | None, raw: str,
                                               state: InstanceState | None) -> None:
    assert vast_state(actual, intended, cur) == (raw, state)


def test_unknown_status_is_unknown_and_logged(env: Env, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    pid = launch(env)
    env.cloud.settle(120)
    env.cloud.set_raw_status(env.sim(pid).id, "zz-new-status")
    with caplog.at_level(logging.WARNING, logger="gpufsm.adapters.vastai"):
        inst = get(env, pid)
        [listed] = env.adapter.list_instances()
    assert (inst.raw_status, inst.state) == ("zz-new-status", None)
    assert listed.state is None
    records = [r for r in caplog.records if r.name == "gpufsm.adapters.vastai"]
    assert records and all("zz-new-status" in r.getMessage() for r in records)


@pytest.mark.parametrize(("phase", "state"), [
    ("provisioning", S.CREATED),
    ("booting", S.STARTING),
    ("rebooting", S.STARTING),
    ("running", S.RUNNING),
    ("stopping", S.STOPPING),
    ("stopped", S.STOPPED),
    ("unhealthy", S.FAILED),  # the host stopped answering: actual_status "unknown"
    ("preempted", S.STOPPED),  # outbid: contract stopped, intent kept
    ("terminating", S.TERMINATED),
    ("terminated", None),  # Vast lists no destroyed instance: get answers null
])
def test_every_sim_phase_reads_as_intended(env: Env, phase: str, state: InstanceState | None
                                           ) -> None:
    pid = launch(env)
    inst = env.sim(pid)
    inst.phase, inst.epoch = phase, inst.epoch + 1  # no scheduled step applies any more
    seen = env.adapter.get(pid)
    assert (seen.state if seen else None) is state
    listed = [i for i in env.adapter.list_instances() if i.provider_instance_id == pid]
    assert [i.state for i in listed] == ([state] if state else [])


def test_a_stopped_machine_being_started_reads_starting_not_failed(env: Env) -> None:
    """Issue 9 item 12: stop, then start: Vast still reports the container ``exited`` for
    a moment while intent and contract say running. Read FAILED, the next pass destroyed
    the user's machine and disk; it is STARTING."""
    pid = launch(env)
    env.cloud.settle(120)
    env.adapter.stop(pid)
    env.cloud.settle(60)
    inst = env.sim(pid)
    env.cloud.set_raw_status(inst.id, "exited")  # how Vast shows a stopped container
    assert (get(env, pid).raw_status, get(env, pid).state) == ("exited (stopped)", S.STOPPED)
    env.adapter.start(pid)
    env.cloud.settle(1.0)  # intent and contract say running now
    env.cloud.set_raw_status(inst.id, "exited")  # the container has not moved yet
    starting = get(env, pid)
    assert (starting.raw_status, starting.state) == ("exited (intended running)", S.STARTING)
    env.cloud.set_raw_status(inst.id, None)
    env.cloud.settle(60)
    assert get(env, pid).state is S.RUNNING


def test_recycling_and_a_stopped_exit_read_right(env: Env) -> None:
    pid = launch(env)
    env.cloud.settle(120)
    inst = env.sim(pid)
    inst.phase, inst.meta["reboot_word"] = "rebooting", "recycling"
    assert (get(env, pid).raw_status, get(env, pid).state) == ("recycling", S.STARTING)
    inst.phase = "stopped"
    env.cloud.set_raw_status(inst.id, "exited")  # how Vast often shows a stopped container
    assert get(env, pid).state is S.STOPPED


def test_odd_fields_degrade_instead_of_failing() -> None:
    inst = to_provider_instance(VastInstance.model_validate({
        "id": "123", "actual_status": "running", "label": None, "public_ipaddr": "1.2.3.4\n",
        "ssh_port": "not a port", "ports": [8080, 8081], "dph_total": "0.5",
        "num_gpus": None, "geolocation": 7,
    }))
    assert inst.provider_instance_id == "123" and inst.ip == "1.2.3.4"
    assert inst.ssh_port is None and inst.price_per_hour == 0.5 and inst.region == "7"
    assert inst.tag is None


# ---- errors: the table and the mapper ----------------------------------------------------


def test_error_table_covers_every_code_in_the_notes() -> None:
    for code, (_, cls) in NOTES_ERRORS.items():
        assert VAST_ERRORS.get(code) is cls, code


@pytest.mark.parametrize("code", list(NOTES_ERRORS))
def test_each_documented_error_body_maps(code: str) -> None:
    status, cls = NOTES_ERRORS[code]
    body = {"success": False, "error": code, "msg": "something"}
    error = map_vast_error(httpx.Response(status, json=body), "vastai")
    assert isinstance(error, cls) and error.code == code and error.status_code == status


def _resp(status: int, body: Any) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body)
    if body is None:
        return httpx.Response(status)
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(("status", "body", "cls"), [
    # the spec's 404: a generic error code, the real reason embedded in msg
    (404, {"success": False, "error": "invalid_args",
           "msg": "error 404/3603: no_such_ask Instance type by id 1 is not available."},
     InsufficientCapacity),
    (410, {"success": False, "error": "no_such_ask",
           "msg": "error 410/3907: no_such_ask Instance type 1 is no longer available."},
     InsufficientCapacity),
    (400, {"msg": "Your account lacks credit"}, InsufficientCredit),
    (400, {"message": "Your account lacks credit"}, InsufficientCredit),
    (400, {"success": False, "error": "invalid_args", "msg": "Your account lacks credit"},
     InsufficientCredit),  # the specific reason wins over the generic code
    (400, "Your account lacks credit", InsufficientCredit),
    (429, "API requests too frequent", RateLimited),
    (429, "API requests too frequent: endpoint threshold=2.0", RateLimited),
    (429, {"detail": "API requests too frequent endpoint threshold=1.0"}, RateLimited),
    (429, None, RateLimited),
    (401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}, AuthError),
    (404, {"error": "unauthorized", "msg": "Invalid user key"}, AuthError),  # search's 404
    (403, {"success": False, "error": "invalid_args",
           "msg": "error 403/3586: Offer 1 is not your own."}, InvalidRequest),
    (404, {"success": False, "error": "not_found", "msg": "Instance not found"},
     ProviderNotFound),  # Vast's own not-found: the only 404 that means "gone"
    # Not a Vast body: left to the seam, which reads it as an unknown outcome, never gone.
    (404, "Not Found", None),
    (404, None, None),
    (400, {"msg": "ssh key not_found in this account"}, None),  # bare words are not codes
    (404, {"detail": "Not Found"}, None),
    (400, {"detail": "something new"}, None),
    (500, {"success": False, "error": "invalid_args"}, None),  # 5xx stays temporary
    (503, "Service Unavailable", None),
])
def test_mapper_reads_every_shape(status: int, body: Any, cls: type[ProviderError] | None
                                  ) -> None:
    error = map_vast_error(_resp(status, body), "vastai")
    if cls is None:
        assert error is None
    else:
        assert type(error) is cls
    if isinstance(error, RateLimited):
        assert error.retry_after is None  # Vast never says when


# ---- errors over HTTP ----------------------------------------------------------------


def test_no_matching_offer_is_insufficient_capacity(env: Env) -> None:
    with pytest.raises(InsufficientCapacity):
        launch(env, instance_type="A100_PCIE")
    with pytest.raises(InsufficientCapacity):
        launch(env, max_price_per_hour=0.1)
    with pytest.raises(InsufficientCapacity):
        launch(env, region="JP")
    assert env.count("PUT", "/api/v0/asks/") == 0


def test_an_offer_taken_meanwhile_moves_on_to_the_next(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity")  # 410 no_such_ask on the first accept
    pid = launch(env)
    puts = [r.path for r, _ in env.exchanges if r.method == "PUT"]
    assert puts == ["/api/v0/asks/9000000/", "/api/v0/asks/9000001/"]
    assert get(env, pid).region == "Stockholm, SE"


def test_every_offer_gone_is_insufficient_capacity(env: Env) -> None:
    env.cloud.fail_next("launch", "capacity", times=5)
    with pytest.raises(InsufficientCapacity) as caught:
        launch(env)
    assert caught.value.code == "no_such_ask" and caught.value.status_code == 410
    assert env.count("PUT", "/api/v0/asks/") == 2  # the two RTX 4090 x1 offers
    assert env.cloud.live_instances() == []


def test_an_unknown_offer_id_is_insufficient_capacity(env: Env) -> None:
    with pytest.raises(InsufficientCapacity) as caught:
        launch(env, options={"offer_id": 1234})
    assert caught.value.code == "no_offer"
    assert env.count("PUT", "/api/v0/asks/") == 0


def test_an_offer_taken_between_search_and_accept_is_no_such_ask(env: Env) -> None:
    env.adapter.instance_types()  # the emulator learns its asks
    with httpx.Client(base_url=env.server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as raw:
        gone = raw.put("/api/v0/asks/1234/", json={"image": "x"})
    error = map_vast_error(httpx.Response(gone.status_code, content=gone.content), "vastai")
    assert isinstance(error, InsufficientCapacity) and error.code == "no_such_ask"


def test_no_credit_is_insufficient_credit(env: Env) -> None:
    env.cloud.credit_ok = False
    with pytest.raises(InsufficientCredit):
        launch(env)
    assert env.cloud.live_instances() == []


def test_a_refusal_on_a_200_is_still_an_error(env: Env) -> None:
    def credit_on_200(request: EmulatorRequest, response: EmulatorResponse) -> None:
        if request.path.startswith("/api/v0/asks/"):
            response.status, response.body = 200, {"success": False,
                                                   "msg": "Your account lacks credit"}

    env.hook(credit_on_200)
    with pytest.raises(InsufficientCredit):
        launch(env)


def test_a_stop_vast_refuses_on_a_200_is_invalid_request(env: Env) -> None:
    pid = launch(env)  # still provisioning: the sim cannot stop it yet
    with pytest.raises(InvalidRequest) as caught:
        env.adapter.stop(pid)
    assert caught.value.status_code == 200


@pytest.mark.parametrize("style", ["null", "404"])
def test_a_missing_instance_reads_none(env: Env, style: str) -> None:
    env.dialect.missing_show = style
    assert env.adapter.get("31999999") is None
    pid = launch(env)
    env.adapter.terminate(pid)
    env.cloud.settle(3600)
    assert env.adapter.get(pid) is None


def test_commands_on_a_missing_instance(env: Env) -> None:
    with pytest.raises(ProviderNotFound):
        env.adapter.start("31999999")
    with pytest.raises(ProviderNotFound):
        env.adapter.stop("31999999")
    with pytest.raises(InvalidRequest):  # reboot's only documented refusal is 400
        env.adapter.restart("31999999")


def test_the_emulator_refuses_what_vast_refuses(env: Env) -> None:
    env.adapter.instance_types()  # learn the asks
    with httpx.Client(base_url=env.server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as raw:
        no_image = raw.put("/api/v0/asks/9000000/", json={"label": "x"})
        bad_price = raw.put("/api/v0/asks/9000000/", json={"image": "x", "price": 500})
        bad_filter = raw.post("/api/v0/bundles/", json={"colour": {"eq": "red"}})
        bad_token = raw.get("/api/v1/instances", params={"after_token": "%%%"})
    assert no_image.status_code == 400 and no_image.json()["error"] == "invalid_args"
    assert bad_price.json()["error"] == "invalid_price"
    assert bad_filter.json()["error"] == "invalid_request"
    assert bad_token.json()["error"] == "invalid_token"
    assert env.cloud.live_instances() == []
    assert env.check.validated[("/api/v0/asks/{id}", "put", "400")] == 2
    # The spec check sees what these requests break, which is the point of sending them.
    assert sorted(e.split(": ", 1)[1] for e in env.check.errors) == [
        "$.price: 500 is greater than the maximum of 128.0",
        "$: 'image' is a required property",
    ]
    env.check.errors.clear()


# ---- faults and retries --------------------------------------------------------------


@pytest.mark.parametrize("style", ["text", "detail", "error"])
def test_429_without_retry_after_is_retried(env: Env, style: str) -> None:
    env.dialect.rate_limit_style = style
    env.server.inject(HttpFault("429", times=2, path_contains="/api/v1/instances"))
    started = env.clock.monotonic()
    assert env.adapter.list_instances() == []
    assert env.count("GET", "/api/v1/instances") == 3
    limited = [rs for _, rs in env.exchanges if rs.status == 429]
    assert len(limited) == 2
    assert all("Retry-After" not in rs.headers for rs in limited)
    assert env.clock.monotonic() - started <= 0.5 + 1.0  # jittered backoff, no header


def test_sim_timeout_on_get_is_retried(env: Env) -> None:
    pid = launch(env)
    env.cloud.fail_next("get", "timeout")  # the emulator answers 504
    assert get(env, pid)
    assert env.count("GET", f"/api/v0/instances/{pid}/") == 2


def test_a_sim_rate_limit_is_retried(env: Env) -> None:
    env.cloud.fail_next("list", "rate_limit")  # JSON {"error": "rate_limit_exceeded"}
    assert env.adapter.list_instances() == []
    assert env.count("GET", "/api/v1/instances") == 2


# ---- pagination ------------------------------------------------------------------------


def _fill(env: Env, n: int) -> set[str]:
    for i in range(n):
        env.cloud.create_instance(instance_type="RTX_4090", name=ownership_tag(f"p{i}"),
                                  tag=ownership_tag(f"p{i}"))
    return {ownership_tag(f"p{i}") for i in range(n)}


def test_list_follows_every_page(env: Env) -> None:
    tags = _fill(env, 60)
    listed = env.adapter.list_instances()
    assert {i.tag for i in listed} == tags and len(listed) == 60
    pages = [rs.body for rq, rs in env.exchanges if rq.path == "/api/v1/instances/"]
    assert [len(p["instances"]) for p in pages] == [25, 25, 10]
    assert pages[-1]["next_token"] is None
    assert all(q.param("limit") == "25" for q, _ in env.exchanges)


def test_a_repeating_cursor_is_refused(env: Env) -> None:
    def stuck(request: EmulatorRequest, response: EmulatorResponse) -> None:
        if request.path == "/api/v1/instances/" and isinstance(response.body, dict):
            response.body["next_token"] = "eyJ2YWx1ZXMiOiB7ImlkIjogMH19"  # {"values":{"id":0}}

    env.hook(stuck)
    with pytest.raises(ProviderUnavailable):
        env.adapter.list_instances()


def test_the_legacy_listing_is_served(env: Env) -> None:
    """GET /api/v0/instances/ is not in the spec (the CLI uses it): shape checked here."""
    pid = launch(env)
    with httpx.Client(base_url=env.server.url,
                      headers={"Authorization": f"Bearer {KEY}"}) as raw:
        body = raw.get("/api/v0/instances/", params={"owner": "me"}).json()
    assert [i["id"] for i in body["instances"]] == [int(pid)]


# ---- spec validation -----------------------------------------------------------------


@pytest.mark.parametrize(("kw", "field"), [
    ({"image": None}, "image"),
    ({"instance_type": "___"}, "instance_type"),
    ({"gpu_count": 17}, "gpu_count"),
    ({"command": "x" * 4049}, "command"),
    ({"env": {"A": "b c"}}, "env.A"),
    ({"env": {"1A": "x"}}, "env.1A"),
    ({"options": {"runtype": "telnet"}}, "options.runtype"),
    ({"options": {"price": 500}}, "options.price"),
    ({"options": {"offer_id": "abc"}}, "options.offer_id"),
    ({"options": {"colour": "red"}}, "options.colour"),
    ({"options": {"filters": {"gpu_ram": 5}}}, "options.filters.gpu_ram"),
    ({"options": {"target_state": "frozen"}}, "options.target_state"),
    ({"options": {"max_offer_attempts": 0}}, "options.max_offer_attempts"),
    ({"options": {"interruptible": "yes"}}, "options.interruptible"),
    ({"options": {"price": 0.5}, "max_price_per_hour": 0.4}, "options.price"),
    ({"ssh_key_names": ("laptop",)}, "ssh_key_names"),  # Vast uses the account's keys
])
def test_spec_errors_name_the_field(env: Env, kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        env.adapter.launch(request_for(spec(**kw)))
    assert caught.value.field == field
    assert env.adapter.seam.calls == 0


def test_rules_pydantic_would_already_catch_are_checked_too(env: Env) -> None:
    raw = InstanceSpec.model_construct(provider="vastai", instance_type="RTX_4090",
                                       image="x", disk_gb=0)
    with pytest.raises(ValidationError) as caught:
        env.adapter.validate(raw)
    assert caught.value.field == "disk_gb"


def test_instance_ids_must_be_integers(env: Env) -> None:
    for call in (env.adapter.get, env.adapter.terminate, env.adapter.stop):
        with pytest.raises(ValidationError) as caught:
            call("sim-000001")
        assert caught.value.field == "provider_instance_id"
    assert env.adapter.seam.calls == 0


# ---- secrets, registry, configuration -----------------------------------------------------


def test_a_key_echoed_in_a_refusal_is_masked(env: Env,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Vast-only shapes: a refusal on a 200 (``success: false``) and on a 400, each
    echoing the key in ``msg`` (the contract suite covers the other error paths)."""
    caplog.set_level(logging.DEBUG)
    pid = launch(env)
    texts: list[str] = []

    def echo_the_key(request: EmulatorRequest, response: EmulatorResponse) -> None:
        if request.method == "PUT" and "/instances/" in request.path:
            status = 200 if "reboot" in request.path else 400
            response.status, response.body = status, {
                "success": False, "error": "invalid_args", "msg": f"bad key {KEY}"}

    env.hook(echo_the_key)  # should a server ever echo the key, it is scrubbed
    for call in (env.adapter.stop, env.adapter.restart):
        with pytest.raises(InvalidRequest) as echoed:
            call(pid)
        texts += [str(echoed.value)]
        assert "**********" in str(echoed.value)
    assert caplog.records, "expected some logging at DEBUG"
    assert KEY not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert all(KEY not in t for t in texts)


def test_integer_sim_ids_are_kept_as_vast_ids() -> None:
    cloud = SimulatedCloud("vastai", clock=FakeClock(), instance_types=TYPES, id_prefix="")
    dialect = VastDialect(cloud)
    pid = cloud.spawn_untracked(None, instance_type="RTX_4090")  # "000001": padded
    assert dialect.vast_id(cloud.instance(pid)) != int(pid)
    assert dialect.sim_id(dialect.provider_id(pid)) == pid
    with pytest.raises(KeyError):
        dialect.sim_id("123")


@pytest.mark.parametrize(("ports", "expected"), [
    (None, ("ssh5.vast.ai", 41022)),  # booting: only the proxy pair is known
    ({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "33022"}]}, (None, 33022)),  # direct
])
def test_ssh_endpoint_is_one_pair_never_mixed(ports: object,
                                              expected: tuple[str | None, int]) -> None:
    inst = to_provider_instance(VastInstance.model_validate({
        "id": 9, "actual_status": "running", "public_ipaddr": "203.0.113.5",
        "ssh_host": "ssh5.vast.ai", "ssh_port": 41022, "ports": ports,
    }))
    assert (inst.ssh_host, inst.ssh_port) == expected
