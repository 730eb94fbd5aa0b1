"""Vast.ai's REST dialect over a SimulatedCloud, on Vast's own paths, shapes and words.

Served (with the trailing slashes the official docs use):

=======  ===================================  ==========================================
POST     /api/v0/bundles/                     search offers: one ask per (sim type, region)
                                              with capacity, at that region's price
PUT      /api/v0/asks/{ask_id}/               accept an ask: ``{"success", "new_contract"}``
GET      /api/v0/instances/{id}/              ``{"instances": {...}}``; missing → null (404
                                              when ``missing_show == "404"``)
PUT      /api/v0/instances/{id}/              ``{"state": "running"|"stopped"}``, ``{"label"}``
DELETE   /api/v0/instances/{id}/              ``{"success": true}`` (empty with
                                              ``empty_destroy_body``); missing → 404 not_found
PUT      /api/v0/instances/reboot/{id}/       reboot (status ``rebooting``)
PUT      /api/v0/instances/recycle/{id}/      recycle (status ``recycling``)
GET      /api/v0/instances/                   legacy complete listing (not in the spec)
GET      /api/v1/instances[/]                 keyset pages, at most 25, ``next_token``
=======  ===================================  ==========================================

Sim phases become Vast's three status fields (``actual_status``, ``intended_status``,
``cur_state``); ``raw_override`` replaces ``actual_status`` verbatim:

============  ==============  ========  =========  ========================================
phase         actual_status   intended  cur_state  why
============  ==============  ========  =========  ========================================
provisioning  null            running   running    Vast's "being provisioned"
booting       loading         running   running
rebooting     rebooting       running   running    ``recycling`` after the recycle endpoint
running       running         running   running
stopping      running         stopped   running    stop asked, container still up
stopped       stopped         stopped   stopped
unhealthy     unknown         running   running    the host stopped answering: dead where it
                                                   stands (an exited container whose intent
                                                   is running reads as *starting*, which is
                                                   how Vast shows a start in progress)
preempted     exited          running   stopped    outbid: the contract is stopped, intent
                                                   kept; the sim then removes it
terminating   exited          stopped   unloaded   contract released on destroy
terminated    (absent)                             Vast does not list destroyed instances
============  ==============  ========  =========  ========================================

Vast instance ids are integers, sim ids are strings: the dialect numbers instances as it
first sees them and keeps the number in ``SimInstance.meta["vast_id"]``. Sim errors
become Vast's error bodies (see ``_sim_error``); the 429 body carries no Retry-After
unless the server's HttpFault adds one, because Vast never sends it.

Requests are also read the way Vast's own SDK (``vastai``, tests/compat/vastai) sends
them, which the spec alone does not describe: ``env`` as an object as well as a
docker-flag string, filter values as strings (``{"num_gpus": {"eq": "1"}}``), multi-word
runtypes (``"ssh_direc ssh_proxy"``), nulls for unset fields, and an ask accepted without
a search first. ``extra_env`` reads back as ``[key, value]`` pairs, which the SDK needs.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import shlex
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from gpufsm.adapters import InstanceTypeOffer, tag_from_name
from gpufsm.errors import (
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    QuotaExceeded,
    RateLimited,
)
from gpufsm.testing._sim import REGION_PRICES, SimInstance, SimulatedCloud, region_price
from gpufsm.testing.emulators._server import EmulatorRequest, EmulatorResponse

__all__ = ["VAST_CATALOG", "VAST_PHASE_WORDS", "VAST_SEARCH_FIELDS", "VastDialect"]

#: What ``gpufsm emulator --dialect vastai`` sells: one ask per (type, region), priced by
#: region where ``region_prices`` says so; every ask takes bids from its ``min_bid`` (the
#: type's ``spot_price_per_hour``, else 40 % of the ask). The last type is sold out.
VAST_CATALOG: tuple[InstanceTypeOffer, ...] = (
    InstanceTypeOffer("vastai", "RTX_4090", 0.35, ("Texas, US", "Stockholm, SE"), 1,
                      "RTX 4090 (24 GB)"),
    InstanceTypeOffer("vastai", "RTX_3090", 0.18, ("Quebec, CA",), 1, "RTX 3090 (24 GB)"),
    InstanceTypeOffer("vastai", "H100_SXM", 2.10, ("Oregon, US",), 1, "H100 SXM (80 GB)"),
    # After the types above, so their ask ids (numbered in this order) stay as they were.
    InstanceTypeOffer("vastai", "A100_SXM4", 1.05, ("Texas, US", "Oregon, US"), 1,
                      "A100 SXM4 (80 GB)",
                      extra={REGION_PRICES: {"Texas, US": 1.05, "Oregon, US": 1.19}}),
    InstanceTypeOffer("vastai", "A100_PCIE", 1.10, (), 1, "A100 PCIE (40 GB)"),
)

#: sim phase → (actual_status, intended_status, cur_state, next_state, status_msg).
VAST_PHASE_WORDS: Mapping[str, tuple[str | None, str, str, str, str | None]] = {
    "provisioning": (None, "running", "running", "running", None),
    "booting": ("loading", "running", "running", "running", "Loading image"),
    "rebooting": ("rebooting", "running", "running", "running", None),
    "running": ("running", "running", "running", "running", "success, running"),
    "stopping": ("running", "stopped", "running", "stopped", None),
    "stopped": ("stopped", "stopped", "stopped", "stopped", None),
    "unhealthy": ("unknown", "running", "running", "running",
                  "no recent heartbeat from the host"),
    "preempted": ("exited", "running", "stopped", "running",
                  "interruptible instance outbid and stopped"),
    "terminating": ("exited", "stopped", "unloaded", "unloaded", "destroying"),
}

#: Filter fields of ``POST /bundles/`` (the openapi request schema's properties).
VAST_SEARCH_FIELDS = frozenset({
    "verified", "rentable", "rented", "gpu_name", "reliability", "num_gpus", "gpu_ram",
    "duration", "machine_id", "dlperf_per_dphtotal", "dph_total", "flops_per_dphtotal",
    "geolocation", "gpu_arch", "dlperf", "cuda_max_good", "inet_down", "inet_up",
    "inet_down_cost", "inet_up_cost", "driver_version", "compute_cap", "cpu_arch", "has_avx",
    "cpu_cores", "cpu_cores_effective", "cpu_ghz", "cpu_ram", "datacenter", "external",
    "disk_bw", "disk_space", "bw_nvlink", "gpu_max_power", "gpu_max_temp", "gpu_mem_bw",
    "gpu_total_ram", "gpu_frac", "gpu_display_active", "direct_port_count", "host_id", "id",
    "min_bid", "mobo_name", "pci_gen", "pcie_bw", "storage_cost", "static_ip", "total_flops",
    "os_version", "ubuntu_version", "verification", "vms_enabled", "reliability2",
})
#: Search knobs that are not filters: the spec's, and the ones Vast's own SDK sends
#: (``SyncClient.search``, ``search_offers(disable_bundling=)``), accepted and ignored.
_SEARCH_META = frozenset({"limit", "type", "order", "allocated_storage", "target_reliability",
                          "extra_ids", "gpu_option", "show_incompatible", "sort_option",
                          "template_id", "disable_bundling"})
_SEARCH_TYPES = frozenset({"on-demand", "ondemand", "bid", "reserved"})
_OPS = frozenset({"eq", "neq", "gt", "lt", "gte", "lte", "in", "notin"})
#: The spec's enum, plus what Vast's own SDK and CLI send for direct connections: several
#: space-separated words, spelt ``ssh_direc`` (``--ssh --direct`` is "ssh_direc
#: ssh_proxy"); the v1 listing's example ``image_runtype`` reads "ssh ssh_direc ssh_proxy".
_RUNTYPES = frozenset({"ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy",
                       "jupyter_direct", "ssh_direc", "jupyter_direc"})
_V1_FILTERABLE = frozenset({"actual_status", "gpu_name", "verification", "id", "label",
                            "intended_status", "cur_state", "next_state", "machine_id",
                            "image_uuid"})
_GONE = frozenset({"terminated"})
_UP = frozenset({"running", "rebooting", "stopping"})
_FIRST_ID = 31_000_001
_ANY_HOST = "0.0.0.0"  # noqa: S104 - docker's "every host address", text only
_ASK_BASE = 9_000_000

#: The ``msg`` Vast sends with each documented ``error`` code (NOTES.md "Errors").
_ERROR_TEXT: Mapping[str, str] = {
    "invalid_args": "error 400/3467: Invalid args",
    "invalid_price": "error 400/3470: invalid_price bid must be 0.001..128 $/h",
    "no_ssh_key_for_vm": "error 400/3471: no_ssh_key_for_vm VM instances need an SSH key "
                         "on the account",
    "no_such_ask": "error 410/3907: no_such_ask Instance type is no longer available.",
    "auth_error": "Invalid user key",
    "not_found": "Instance not found",
    "invalid_request": "Error in query parameters",
    "invalid_token": "invalid after_token",
    "rate_limit_exceeded": "API requests too frequent endpoint threshold=1.0",
    "insufficient_credit": "Your account lacks credit",
}


def _gpu_display(name: str) -> str:
    """A sim type name as Vast's ``gpu_name``: ``2x_RTX_4090`` → ``RTX 4090``."""
    return " ".join(re.sub(r"^\d+x[ _]", "", name).replace("_", " ").split())


def _fail(status: int, error: str | None, msg: str, **extra: Any) -> EmulatorResponse:
    body: dict[str, Any] = {"success": False}
    if error is not None:
        body["error"] = error
    body["msg"] = msg
    body.update(extra)
    return EmulatorResponse(status, body)


def _env_pairs(env: Any) -> list[list[str]]:
    """Create's ``env`` as the ``extra_env`` pairs an instance shows.

    The spec types ``env`` as a docker-flag string (``"-e K=V -p 8000:8000"``); Vast's
    own SDK and CLI send the object their ``parse_env`` makes of such a string
    (``{"K": "V", "-p 8000:8000": "1"}``). Both read back the same way, as the v1
    listing's example shows: ``[["K", "V"], ["-p 8000:8000", "1"]]``.
    """
    if isinstance(env, Mapping):
        return [[str(k), str(v)] for k, v in env.items()]
    if not isinstance(env, str):
        return []
    try:
        words = shlex.split(env)
    except ValueError:
        words = env.split()
    pairs: list[list[str]] = []
    for flag, value in itertools.pairwise(words):
        if flag == "-e" and "=" in value:
            key, _, val = value.partition("=")
            pairs.append([key, val])
        elif flag in ("-p", "-v", "-n", "-h"):
            pairs.append([f"{flag} {value}", "1"])
    return pairs


def _ports(pairs: list[list[str]]) -> list[int]:
    """Container ports a ``-p HOST:CONTAINER`` flag among ``pairs`` publishes."""
    found = (re.fullmatch(r"-p\s+\d+:(\d+)(?:/(?:tcp|udp))?", key) for key, _ in pairs)
    return [int(m.group(1)) for m in found if m is not None]


def _coerce(target: Any, like: Any) -> Any:
    """A filter value as Vast compares it: the official client's query parser sends
    numbers and booleans as strings (``{"num_gpus": {"eq": "1"}}``), and Vast matches
    them against the numeric column all the same."""
    if isinstance(target, list):
        return [_coerce(t, like) for t in target]
    if not isinstance(target, str) or like is None or isinstance(like, str):
        return target
    text = target.strip().lower()
    if isinstance(like, bool):
        return {"true": True, "false": False}.get(text, target)
    try:
        return float(text)
    except ValueError:
        return target


def _to_int(value: str | None) -> int | None:
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    return int(value)


def _token(last_id: int) -> str:
    return base64.b64encode(json.dumps({"values": {"id": last_id}}).encode()).decode()


def _untoken(token: str) -> int | None:
    try:
        data = json.loads(base64.b64decode(token.encode(), validate=True))
        value = data["values"]["id"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _matches(value: Any, op: str, target: Any, norm: Callable[[Any], Any]) -> bool:
    """One ``{op: target}`` condition; ``norm`` makes names/locations comparable."""
    target = _coerce(target, value)
    try:
        if op in ("in", "notin"):
            items = target if isinstance(target, list) else [target]
            hit = any(norm(value) == norm(t) for t in items)
            return hit if op == "in" else not hit
        if op == "eq":
            return bool(norm(value) == norm(target))
        if op == "neq":
            return bool(norm(value) != norm(target))
        if value is None:
            return False
        if op == "gt":
            return bool(value > target)
        if op == "gte":
            return bool(value >= target)
        if op == "lt":
            return bool(value < target)
        return bool(value <= target)  # lte
    except TypeError:
        return False


def _sort_key(field: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda offer: (offer.get(field) is None, offer.get(field) or 0)


class VastDialect:
    """Vast.ai's API over a SimulatedCloud; see the module docstring for the mapping."""

    name = "vastai"
    catalog = VAST_CATALOG
    id_prefix: str | None = None

    def __init__(self, cloud: SimulatedCloud) -> None:
        self.cloud = cloud
        #: How a missing instance reads on GET /instances/{id}/: "null" or "404".
        self.missing_show = "null"
        #: 429 body: "text" (plain), "detail" ({"detail"}) or "error" ({success,error,msg}).
        self.rate_limit_style = "text"
        #: DELETE answers 200 with no body at all (Vast sometimes does).
        self.empty_destroy_body = False
        self._lock = threading.RLock()
        self._ids: dict[int, str] = {}
        self._next_id = itertools.count(_FIRST_ID)
        self._asks: dict[int, tuple[str, str]] = {}
        self._gpus: dict[str, int] = {}  # sim type → GPUs per offer, learnt from searches
        self.requests: Counter[str] = Counter()  # by route name, for assertions
        self._routes: tuple[tuple[str, re.Pattern[str], str,
                                  Callable[[EmulatorRequest, str], EmulatorResponse]], ...] = (
            ("POST", re.compile(r"^/api/v0/bundles/$"), "search", self._search),
            ("PUT", re.compile(r"^/api/v0/asks/([^/]+)/$"), "create", self._create),
            ("GET", re.compile(r"^/api/v0/instances/$"), "list_v0", self._list_v0),
            # The official SDK/CLI (vastai 1.9) call it with the slash, the spec without.
            ("GET", re.compile(r"^/api/v1/instances/?$"), "list_v1", self._list_v1),
            ("PUT", re.compile(r"^/api/v0/instances/reboot/([^/]+)/$"), "reboot",
             self._reboot),
            ("PUT", re.compile(r"^/api/v0/instances/recycle/([^/]+)/$"), "recycle",
             self._recycle),
            ("GET", re.compile(r"^/api/v0/instances/([^/]+)/$"), "show", self._show),
            ("PUT", re.compile(r"^/api/v0/instances/([^/]+)/$"), "manage", self._manage),
            ("DELETE", re.compile(r"^/api/v0/instances/([^/]+)/$"), "destroy",
             self._destroy),
        )

    # ---- Dialect -------------------------------------------------------------------------

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        path_known = False
        for method, pattern, route, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_known = True
            if method != request.method:
                continue
            with self._lock:
                self.requests[route] += 1
                return handler(request, match.group(1) if match.groups() else "")
        if path_known:
            return EmulatorResponse(405, "Method Not Allowed")
        return EmulatorResponse(404, "Not Found")  # a framework 404, not a Vast body

    def unauthorized(self) -> EmulatorResponse:
        return _fail(401, "auth_error", "Invalid user key")

    def rate_limited(self) -> EmulatorResponse:
        if self.rate_limit_style == "detail":
            return EmulatorResponse(429, {"detail": "API requests too frequent endpoint "
                                                    "threshold=2.0"})
        if self.rate_limit_style == "error":
            return _fail(429, "rate_limit_exceeded",
                         "API requests too frequent endpoint threshold=3.0")
        return EmulatorResponse(429, "API requests too frequent: endpoint threshold=2.0")

    def server_error(self) -> EmulatorResponse:
        return EmulatorResponse(500, "Internal Server Error")

    def provider_error(self, request: EmulatorRequest, status: int, code: str,
                       message: str | None) -> EmulatorResponse:
        """Any documented error in Vast's common shape ``{success, error, msg}``, with the
        ``msg`` Vast writes for it (NOTES.md "Errors") unless the test gives one."""
        return _fail(status, code or None, message or _ERROR_TEXT.get(
            code, f"error {status}: {code or 'error'}"))

    # ---- ids -----------------------------------------------------------------------------

    def vast_id(self, inst: SimInstance) -> int:
        """The integer id Vast shows for ``inst``, assigned on first sight.

        A sim id that already is a canonical integer (``SimulatedCloud(id_prefix="")``
        with unpadded ids) is used as it is, so provider id and sim id coincide.
        """
        with self._lock:
            vid = inst.meta.get("vast_id")
            if not isinstance(vid, int):
                canonical = inst.id.isdigit() and str(int(inst.id)) == inst.id
                vid = int(inst.id) if canonical else next(self._next_id)
                inst.meta["vast_id"] = vid
            self._ids[vid] = inst.id
            return vid

    def sim_id(self, provider_instance_id: str) -> str:
        """The sim id behind a Vast id (what ``cloud.kill``/``vanish`` … take).

        KeyError for an id this dialect never showed.
        """
        vid = _to_int(provider_instance_id)
        found = self._sim_id(vid) if vid is not None else None
        if found is None:
            raise KeyError(provider_instance_id)
        return found

    def provider_id(self, sim_id: str) -> str:
        """The Vast id a client sees for sim instance ``sim_id`` (KeyError if unknown)."""
        return str(self.vast_id(self.cloud.instance(sim_id)))

    def _sim_id(self, vid: int) -> str | None:
        sim_id = self._ids.get(vid)
        if sim_id is None:
            for inst in self.cloud.live_instances(ours_only=False):
                if inst.meta.get("vast_id") == vid:
                    self._ids[vid] = sim_id = inst.id
        return sim_id

    def _present(self, sim_id: str | None) -> SimInstance | None:
        """The sim instance if Vast would still show it (not destroyed, not removed)."""
        if sim_id is None:
            return None
        try:
            inst = self.cloud.instance(sim_id)
        except KeyError:
            return None
        return None if inst.removed or inst.phase in _GONE else inst

    # ---- rendering -------------------------------------------------------------------

    def render(self, inst: SimInstance, *, v1: bool = False) -> dict[str, Any]:
        """``inst`` as a Vast Instance object (v0 show/list, or one v1 page item)."""
        vid = self.vast_id(inst)
        actual, intended, cur, nxt, msg = VAST_PHASE_WORDS.get(
            inst.phase, (inst.phase, "running", "running", "running", None))
        if inst.phase == "rebooting":
            actual = str(inst.meta.get("reboot_word", "rebooting"))
        if inst.raw_override is not None:
            actual = inst.raw_override
        meta = inst.meta
        elapsed = self.cloud.clock.monotonic() - inst.created_at
        record: dict[str, Any] = {
            "id": vid,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": cur,
            "next_state": nxt,
            "label": inst.name or None,
            "image_uuid": str(meta.get("image", "vastai/base-image")),
            "image_runtype": str(meta.get("runtype", "ssh")),
            "image_args": [],
            "extra_env": [list(pair) for pair in meta.get("extra_env", ())],
            "onstart": str(meta.get("onstart") or ""),
            "status_msg": msg,
            "ssh_host": f"ssh{vid % 9 + 1}.vast.ai",
            "ssh_idx": str(vid % 9 + 1),
            "ssh_port": 20000 + vid % 10000,
            "machine_id": int(meta.get("machine_id", 40000)),
            "gpu_name": str(meta.get("gpu_name", _gpu_display(inst.instance_type))),
            "num_gpus": int(meta.get("num_gpus", 1)),
            "dph_total": float(meta.get("dph_total", inst.price_per_hour)),
            "dph_base": float(inst.price_per_hour),
            "geolocation": inst.region,
            "is_bid": bool(meta.get("is_bid", False)),
            "disk_space": float(meta.get("disk", 16.0)),
            "start_date": self.cloud.clock.now().timestamp() - elapsed,
            "uptime_mins": round(elapsed / 60, 2) if inst.phase in _UP else None,
            "verification": "verified",
        }
        if inst.phase in _UP:
            record["public_ipaddr"] = inst.ip
            record["local_ipaddrs"] = "172.17.0.2"
            ports: dict[str, list[dict[str, str]]] = {
                "22/tcp": [{"HostIp": _ANY_HOST, "HostPort": str(40000 + vid % 20000)}]}
            for offset, port in enumerate(meta.get("ports", ()), start=1):
                ports[f"{port}/tcp"] = [{"HostIp": _ANY_HOST,
                                         "HostPort": str(40000 + vid % 20000 + offset)}]
            record["ports"] = ports
        elif v1:
            record["ports"] = None
        return record

    def _visible(self) -> list[SimInstance] | EmulatorResponse:
        """The sim's listing (faults and outages apply) as the instances Vast would show."""
        try:
            views = self.cloud.list_instances()
        except ProviderError as exc:
            return self._sim_error(exc)
        found: list[SimInstance] = []
        for view in views:
            inst = self._present(view.provider_instance_id)
            if inst is not None:
                found.append(inst)
        return found

    # ---- errors ------------------------------------------------------------------------

    def _sim_error(self, exc: ProviderError, *, ask_id: int | None = None) -> EmulatorResponse:
        """A sim error as Vast would answer it (shapes from openapi.yaml and NOTES.md)."""
        if isinstance(exc, InsufficientCredit):
            # Not in the spec; third-party clients record this msg, sometimes with error
            # "insufficient_credit". The create 400's ``error`` is an enum without it, so
            # the spec-conforming variant (msg only) is what the emulator sends.
            return _fail(400, None, "Your account lacks credit")
        if isinstance(exc, InsufficientCapacity):
            return _fail(410, "no_such_ask", f"error 410/3907: no_such_ask Instance type "
                         f"{ask_id} is no longer available.", ask_id=ask_id or 0)
        if isinstance(exc, QuotaExceeded):  # Vast documents no quota code
            return _fail(400, "invalid_args", "error 400/3467: Invalid args: account "
                         "instance limit reached")
        if isinstance(exc, InvalidRequest):
            return _fail(400, "invalid_args", f"error 400/3467: Invalid args: {exc}")
        if isinstance(exc, ProviderNotFound):
            return _fail(404, "not_found", "Instance not found")
        if isinstance(exc, RateLimited):
            return _fail(429, "rate_limit_exceeded",
                         "API requests too frequent endpoint threshold=1.0")
        if isinstance(exc, ProviderTimeout):
            return EmulatorResponse(504, "Gateway Timeout")
        return EmulatorResponse(503, "Service Unavailable")

    # ---- search and create ---------------------------------------------------------------

    def _offers(self, available: list[InstanceTypeOffer] | None,
                bid: bool) -> list[dict[str, Any]]:
        """The asks of the market, those in ``available`` (the cloud's catalog: a sold-out
        region is missing from it) rendered as search results.

        Ask ids are numbered over every type and region the cloud knows, sold out or
        not, so an id always names the same machine: one taken from an earlier search
        and accepted after its region sold out is refused with Vast's ``no_such_ask``,
        never moved to another place.
        """
        with self.cloud._lock:
            types = list(self.cloud._types.values())
        open_regions = ({o.name: set(o.regions) for o in available}
                        if available is not None else None)
        offers: list[dict[str, Any]] = []
        for ti, offer in enumerate(types):
            self._gpus[offer.name] = offer.gpus or 1
            for ri, region in enumerate(offer.regions):
                ask_id = _ASK_BASE + ti * 100 + ri
                self._asks[ask_id] = (offer.name, region)
                if open_regions is None or region in open_regions.get(offer.name, ()):
                    offers.append(self._ask(offer, region, ask_id, ti * 100 + ri, bid))
        return offers

    @staticmethod
    def _ask(offer: InstanceTypeOffer, region: str, ask_id: int, serial: int,
             bid: bool) -> dict[str, Any]:
        """One ask as ``POST /bundles/`` shows it, at its region's price."""
        gpus = offer.gpus or 1
        ram = re.search(r"(\d+)\s*GB", offer.gpu_description or "")
        gpu_ram = int(ram.group(1)) * 1024 if ram else 24576
        price = region_price(offer, region)
        min_bid = offer.spot_price_per_hour or round(price * 0.4, 6)
        return {
            "id": ask_id, "ask_contract_id": ask_id, "bundle_id": ask_id + 500_000,
            "machine_id": 40000 + serial, "host_id": 700 + serial // 100,
            "gpu_name": _gpu_display(offer.name), "num_gpus": gpus,
            "gpu_ram": gpu_ram, "gpu_total_ram": gpu_ram * gpus,
            "dph_total": min_bid if bid else price,
            "dph_base": price, "min_bid": min_bid,
            "geolocation": region, "rentable": True, "rented": False,
            "verification": "verified", "reliability2": 0.995, "reliability": 0.995,
            "disk_space": 500.0, "cuda_max_good": 12.4, "cpu_cores": 32,
            "cpu_ram": 131072, "inet_down": 1000.0, "inet_up": 1000.0,
            "direct_port_count": 100, "external": False, "static_ip": True,
            "is_bid": bid, "hosting_type": 1, "gpu_arch": "nvidia",
            "cpu_arch": "amd64",
        }

    @staticmethod
    def _norm(field: str) -> Callable[[Any], Any]:
        if field == "gpu_name":
            return lambda v: _gpu_display(v).casefold() if isinstance(v, str) else v
        return lambda v: v

    @staticmethod
    def _geo_ok(geolocation: str, op: str, target: Any) -> bool:
        """Vast filters location by two-letter country code; a full string matches too."""
        country = geolocation.rsplit(",", 1)[-1].strip()
        items = target if isinstance(target, list) else [target]
        hit = any(t in (geolocation, country) for t in items)
        return not hit if op in ("notin", "neq") else hit

    def _search(self, request: EmulatorRequest, _: str) -> EmulatorResponse:
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return EmulatorResponse(400, {"error": "invalid_request", "msg": "Invalid json body"})
        kind = body.get("type", "on-demand")
        if kind not in _SEARCH_TYPES:
            return EmulatorResponse(400, {"error": "invalid_request",
                                          "msg": f"invalid type {kind!r}"})
        limit = body.get("limit", 64)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return EmulatorResponse(400, {"error": "invalid_request", "msg": "invalid limit"})
        order = body.get("order", [["score", "desc"]])
        if not isinstance(order, list) or not all(
                isinstance(o, list) and len(o) == 2 and all(isinstance(x, str) for x in o)
                for o in order):
            return EmulatorResponse(400, {"error": "invalid_request", "msg": "invalid order"})
        filters = {k: v for k, v in body.items() if k not in _SEARCH_META}
        bad_filter = self._filter_problem(filters)
        if bad_filter is not None:
            return bad_filter
        try:
            types = list(self.cloud.instance_types())
        except ProviderError as exc:
            return self._sim_error(exc)
        offers = self._offers(types, bid=kind == "bid")
        for field, cond in filters.items():
            offers = self._apply_filter(offers, field, cond)
        for field, direction in reversed(order):
            offers.sort(key=_sort_key(field), reverse=direction == "desc")
        return EmulatorResponse(200, {"offers": offers[:limit]})

    @staticmethod
    def _filter_problem(filters: Mapping[str, Any]) -> EmulatorResponse | None:
        """The 400 for the first unknown search key or bad operator, or None."""
        for field, cond in filters.items():
            if field not in VAST_SEARCH_FIELDS:
                return EmulatorResponse(400, {"error": "invalid_request",
                                              "msg": f"{field} is not a valid search key"})
            if not isinstance(cond, dict) or not cond or set(cond) - _OPS:
                return EmulatorResponse(400, {"error": "invalid_request",
                                              "msg": f"invalid operator for {field}"})
        return None

    def _apply_filter(self, offers: list[dict[str, Any]], field: str,
                      cond: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The offers that pass one search filter, in order."""
        keep = []
        for offer in offers:
            if field not in offer:
                keep.append(offer)  # a filter on a field we do not model: ignored
                continue
            if field == "geolocation":
                ok = all(self._geo_ok(offer[field], op, t) for op, t in cond.items())
            else:
                ok = all(_matches(offer[field], op, t, self._norm(field))
                         for op, t in cond.items())
            if ok:
                keep.append(offer)
        return keep

    def _create(self, request: EmulatorRequest, ask: str) -> EmulatorResponse:
        ask_id = _to_int(ask)
        if ask_id is None:
            return _fail(400, "invalid_args", "error 400/3467: Invalid args: 'id' is required "
                         "and must be a valid offer ID")
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _fail(400, "invalid_args", "error 400/3467: Invalid args: JSON body required",
                         ask_id=ask_id)
        problem = self._create_problem(body)
        if problem is not None:
            code, msg = problem
            return _fail(400, code, msg, ask_id=ask_id)
        target = self._asks.get(ask_id)
        if target is None:
            # An ask exists whether or not this client searched for it first (the SDK
            # is often handed an id from the console or an earlier run): number the
            # market afresh, as a search would, without counting it as one.
            self._offers(None, bid=False)
            target = self._asks.get(ask_id)
        if target is None:
            return _fail(404, "invalid_args", f"error 404/3603: no_such_ask Instance type by "
                         f"id {ask_id} is not available.", ask_id=ask_id)
        type_name, region = target
        label = body.get("label") or ""
        price = body.get("price")
        env = _env_pairs(body.get("env"))
        meta: dict[str, Any] = {
            "image": body.get("image") or "template", "runtype": body.get("runtype", "ssh"),
            "disk": float(body.get("disk") or 16), "extra_env": env,
            "onstart": body.get("onstart"),
            "ask_id": ask_id, "is_bid": price is not None,
            "gpu_name": _gpu_display(type_name),
            "machine_id": 40000 + (ask_id - _ASK_BASE),
            "ports": _ports(env),
        }
        if price is not None:
            meta["dph_total"] = float(price)
        try:
            pid = self.cloud.create_instance(instance_type=type_name, region=region,
                                             name=label, tag=tag_from_name(label), meta=meta)
        except ProviderError as exc:
            return self._sim_error(exc, ask_id=ask_id)
        vid = self.vast_id(self.cloud.instance(pid))
        return EmulatorResponse(200, {"success": True, "new_contract": vid,
                                      "instance_api_key": f"emulated-{vid}"})

    @staticmethod
    def _create_problem(body: Mapping[str, Any]) -> tuple[str, str] | None:
        """What Vast's create endpoint would refuse in this body, as (error, msg)."""
        image = body.get("image")
        if not (isinstance(image, str) and image.strip()) and not body.get("template_hash_id"):
            return "invalid_args", "error 400/3467: Invalid args: 'image' is required"
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 1024):
            return "invalid_args", "error 400/3467: Invalid args: label must be <= 1024 chars"
        runtype = body.get("runtype")
        if runtype is not None and not (isinstance(runtype, str) and runtype.split()
                                        and set(runtype.split()) <= _RUNTYPES):
            return "invalid_args", f"error 400/3467: Invalid args: runtype {runtype!r}"
        price = body.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, int | float)
                                  or not 0.001 <= price <= 128.0):
            return "invalid_price", "error 400/3470: invalid_price bid must be 0.001..128 $/h"
        disk = body.get("disk")
        if disk is not None and (isinstance(disk, bool) or not isinstance(disk, int | float)
                                 or disk <= 0):
            return "invalid_args", "error 400/3467: Invalid args: disk must be a positive number"
        onstart = body.get("onstart")
        if onstart is not None and not isinstance(onstart, str):
            return "invalid_args", "error 400/3467: Invalid args: onstart must be a string"
        env = body.get("env")
        if env is not None and not isinstance(env, str) and not (
                isinstance(env, dict) and all(isinstance(v, str | int | float)
                                              for v in env.values())):
            return "invalid_args", ("error 400/3467: Invalid args: env must be a docker-flag "
                                    "string or an object of strings")
        if isinstance(onstart, str) and len(onstart) > 4048:
            return "invalid_args", "error 400/3467: Invalid args: onstart exceeds 4048 chars"
        return None

    # ---- reading -------------------------------------------------------------------------

    def _show(self, request: EmulatorRequest, ident: str) -> EmulatorResponse:
        vid = _to_int(ident)
        if vid is None:
            return _fail(400, "invalid_args", "invalid instance_id")
        sim_id = self._sim_id(vid)
        try:
            view = self.cloud.get(sim_id or f"vast-{vid}")  # the sim's get faults apply
        except ProviderError as exc:
            return self._sim_error(exc)
        inst = self._present(sim_id) if view is not None else None
        if inst is None:
            if self.missing_show == "404":
                return _fail(404, "not_found", "Instance not found")
            return EmulatorResponse(200, {"instances": None})
        return EmulatorResponse(200, {"instances": self.render(inst)})

    def _list_v0(self, request: EmulatorRequest, _: str) -> EmulatorResponse:
        found = self._visible()
        if isinstance(found, EmulatorResponse):
            return found
        return EmulatorResponse(200, {"instances": [self.render(i) for i in found]})

    def _list_v1(self, request: EmulatorRequest, _: str) -> EmulatorResponse:
        raw_limit = request.param("limit", "25")
        limit = _to_int(raw_limit)
        if limit is None:
            return EmulatorResponse(400, {"error": "invalid_request",
                                          "msg": f"invalid limit {raw_limit!r}"})
        limit = 5 if limit <= 0 else min(limit, 25)
        after: int | None = None
        token = request.param("after_token")
        if token is not None:
            after = _untoken(token)
            if after is None:
                return EmulatorResponse(400, {"error": "invalid_token",
                                              "msg": "invalid after_token"})
        try:
            filters = json.loads(request.param("select_filters", "{}") or "{}")
            json.loads(request.param("order_by", "[]") or "[]")
        except ValueError:
            return EmulatorResponse(400, {"error": "invalid_request",
                                          "msg": "Error in query parameters: invalid JSON"})
        if not isinstance(filters, dict):
            return EmulatorResponse(400, {"error": "invalid_request",
                                          "msg": "select_filters must be an object"})
        for field, cond in filters.items():
            if field not in _V1_FILTERABLE or not isinstance(cond, dict) or set(cond) - _OPS:
                return EmulatorResponse(400, {"error": "invalid_request", "msg": (
                    f"Error in query parameters: {field} is not a valid search key")})
        found = self._visible()
        if isinstance(found, EmulatorResponse):
            return found
        rows = sorted((self.render(i, v1=True) for i in found), key=lambda r: int(r["id"]))
        rows = [r for r in rows if all(_matches(r.get(f), op, t, lambda v: v)
                                       for f, cond in filters.items() for op, t in cond.items())]
        labels: Counter[str] = Counter(r["label"] or "" for r in rows)
        rest = [r for r in rows if after is None or int(r["id"]) > after]
        page = rest[:limit]
        next_token = _token(int(page[-1]["id"])) if len(rest) > len(page) else None
        return EmulatorResponse(200, {
            "success": True, "instances_found": len(page), "total_instances": len(rows),
            "label_counts": dict(labels), "next_token": next_token, "instances": page,
        })

    # ---- commands --------------------------------------------------------------------

    def _manage(self, request: EmulatorRequest, ident: str) -> EmulatorResponse:
        vid = _to_int(ident)
        if vid is None:
            return _fail(400, "invalid_args", "invalid instance_id")
        try:
            body = request.json()
        except ValueError:
            body = None
        problem = self._manage_problem(body)
        if problem is not None:
            return problem
        state, label = body.get("state"), body.get("label")
        sim_id = self._sim_id(vid)
        inst = self._present(sim_id)
        if inst is None or sim_id is None:
            return _fail(404, "not_found", "Instance not found")
        try:
            if label is not None:
                self.cloud.rename(sim_id, label)
            if state == "stopped" and inst.phase not in ("stopping", "stopped"):
                self.cloud.stop(sim_id)
            elif state == "running" and inst.phase not in (
                    "provisioning", "booting", "running", "rebooting"):
                self.cloud.start(sim_id)
        except InvalidRequest:
            # The CLI's documented case: a refusal on a 200 with success false.
            return EmulatorResponse(200, {"success": False, "msg": (
                f"cannot set state {state} on an instance that is {inst.phase}")})
        except ProviderError as exc:
            return self._sim_error(exc)
        except KeyError:
            return _fail(404, "not_found", "Instance not found")
        return EmulatorResponse(200, {"success": True})

    @staticmethod
    def _manage_problem(body: Any) -> EmulatorResponse | None:
        """The 400 for a manage body without a valid state or label, or None."""
        if not isinstance(body, dict) or ("state" not in body and "label" not in body):
            return _fail(400, "invalid_args", "state or label is required")
        state, label = body.get("state"), body.get("label")
        if state is not None and state not in ("running", "stopped"):
            return _fail(400, "invalid_args", f"invalid state {state!r}")
        if label is not None and (not isinstance(label, str) or len(label) > 1024):
            return _fail(400, "invalid_args", "label must be a string of at most 1024 chars")
        return None

    def _reboot(self, request: EmulatorRequest, ident: str) -> EmulatorResponse:
        return self._restart(ident, "rebooting")

    def _recycle(self, request: EmulatorRequest, ident: str) -> EmulatorResponse:
        return self._restart(ident, "recycling")

    def _restart(self, ident: str, word: str) -> EmulatorResponse:
        vid = _to_int(ident)
        if vid is None:
            return _fail(400, "invalid_args", "invalid instance_id")
        sim_id = self._sim_id(vid)
        inst = self._present(sim_id)
        if inst is None or sim_id is None:
            return _fail(400, "invalid_args", "invalid instance_id")
        try:
            self.cloud.restart(sim_id)
        except ProviderError as exc:
            return self._sim_error(exc)
        inst.meta["reboot_word"] = word
        return EmulatorResponse(200, {"success": True})

    def _destroy(self, request: EmulatorRequest, ident: str) -> EmulatorResponse:
        vid = _to_int(ident)
        if vid is None:
            return _fail(400, "invalid_args", "invalid instance_id")
        sim_id = self._sim_id(vid)
        if self._present(sim_id) is None or sim_id is None:
            return _fail(404, "not_found", "Instance not found")
        try:
            self.cloud.terminate(sim_id)
        except ProviderError as exc:
            return self._sim_error(exc)
        if self.empty_destroy_body:
            return EmulatorResponse(200, None)
        return EmulatorResponse(200, {"success": True, "msg": "Instance destroyed successfully"})
