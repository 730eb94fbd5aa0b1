"""RunPod's REST v1 pod API (and the v2 GPU catalog, and the GraphQL pod subset) over a
SimulatedCloud, on loopback.

Paths are production's: ``/v1/pods…`` as on ``rest.runpod.io``, ``/v2/catalog/gpus`` and
``POST /graphql`` as on ``api.runpod.io`` (one emulator host serves all three; GraphQL is
in ``runpod_graphql``, over the same cloud, so each API sees the other's pods). Shapes
follow ``openapi-rest-v1.json`` and ``openapi-v2.json``.

How the simulator's phases read in v1, which only has the *desired* words RUNNING,
EXITED and TERMINATED; readiness shows as ``publicIp``/``portMappings`` being set:

=============== ============= ===================== ==========================================
sim phase       desiredStatus publicIp/portMappings lastStatusChange
=============== ============= ===================== ==========================================
provisioning    RUNNING       empty                 Rented by User: <date>
booting         RUNNING       empty                 (last user action)
rebooting       RUNNING       empty                 Restarted by User: <date>
running         RUNNING       set ({"22": 10341})   (last user action)
stopping        EXITED        empty                 Exited by User: <date> (v1 has no stopping)
stopped         EXITED        empty                 Exited by User: <date>
unhealthy       EXITED        empty                 Exited by Runpod: container error … (v1 has
                                                    no error word; v2 would say ERROR)
preempted       EXITED        empty                 Interrupted by Runpod: … (spot reclaimed)
terminating     TERMINATED    set (being released)  Terminated by User: <date>
terminated      TERMINATED    empty                 Terminated by User: <date>
(vanished)      404 / not listed
=============== ============= ===================== ==========================================

A ``raw_override`` is sent verbatim as ``desiredStatus``. Errors: 401 is the documented
``UnauthorizedError {message}``; the other v1 errors are undocumented, and answer the
``{"error": "...", "status": N}`` body RunPod's REST API is seen to send; 429 answers the
v2 ``application/problem+json`` body; a path RunPod does not serve answers a bare text
404 (as a web server would), which is not RunPod's not-found. The capacity, credit and
spend-limit messages are the ones the adapter recognises by text.

``delete_unknown_status`` chooses what DELETE of an unknown pod answers: v1 documents
only 400 "Invalid Pod ID." for it, while third-party clients expect 404; the adapter
must cope with both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
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
from gpufsm.testing._sim import SimInstance, SimulatedCloud
from gpufsm.testing.emulators._server import EmulatorRequest, EmulatorResponse
from gpufsm.testing.emulators.runpod_graphql import RunPodGraphQL, graphql_error_body

__all__ = ["RUNPOD_CATALOG", "RUNPOD_PHASES", "RunPodDialect"]

#: What ``gpufsm emulator --dialect runpod`` sells: GPU types priced per GPU (secure
#: cloud; community is cheaper), each with a spot price (``spot_price_per_hour``, else
#: half the price). RunPod prices a type once for every data center; the last type is
#: sold out everywhere.
RUNPOD_CATALOG: tuple[InstanceTypeOffer, ...] = (
    InstanceTypeOffer("runpod", "NVIDIA A40", 0.44, ("EU-RO-1", "US-TX-3"), 1, "A40 (48 GB)"),
    InstanceTypeOffer("runpod", "NVIDIA A100 80GB PCIe", 1.64, ("US-TX-3", "EU-RO-1"), 1,
                      "A100 PCIe (80 GB)", spot_price_per_hour=0.82),
    InstanceTypeOffer("runpod", "NVIDIA H100 80GB HBM3", 2.69, ("US-TX-3",), 1,
                      "H100 SXM (80 GB)"),
    InstanceTypeOffer("runpod", "NVIDIA B200", 5.99, (), 1, "B200 (180 GB)"),
)

#: sim phase → (desiredStatus, runtime fields set, lastStatusChange event or None = last
#: user action).
RUNPOD_PHASES: Mapping[str, tuple[str, bool, str | None]] = {
    "provisioning": ("RUNNING", False, None),
    "booting": ("RUNNING", False, None),
    "rebooting": ("RUNNING", False, "Restarted by User"),
    "running": ("RUNNING", True, None),
    "stopping": ("EXITED", False, "Exited by User"),
    "stopped": ("EXITED", False, "Exited by User"),
    "unhealthy": ("EXITED", False, "Exited by Runpod: container exited with an error"),
    "preempted": ("EXITED", False,
                  "Interrupted by Runpod: interruptible pod reclaimed for another rental"),
    "terminating": ("TERMINATED", True, "Terminated by User"),
    "terminated": ("TERMINATED", False, "Terminated by User"),
}

_SSH_PUBLIC_PORT = 10341
_POD_PATH = re.compile(r"^/v1/pods/([^/]+)(?:/(start|stop|restart|reset))?$")
_PORT = re.compile(r"^\d{1,5}/(tcp|http)$")
_CREATE_FIELDS = frozenset({
    "allowedCudaVersions", "cloudType", "computeType", "containerDiskInGb",
    "containerRegistryAuthId", "countryCodes", "cpuFlavorIds", "cpuFlavorPriority",
    "dataCenterIds", "dataCenterPriority", "dockerEntrypoint", "dockerStartCmd", "env",
    "globalNetworking", "gpuCount", "gpuTypeIds", "gpuTypePriority", "imageName",
    "interruptible", "locked", "minDiskBandwidthMBps", "minDownloadMbps", "minRAMPerGPU",
    "minUploadMbps", "minVCPUPerGPU", "name", "networkVolumeId", "ports", "supportPublicIp",
    "templateId", "vcpuCount", "volumeInGb", "volumeMountPath",
})
_LIST_FIELDS = ("allowedCudaVersions", "countryCodes", "cpuFlavorIds", "dataCenterIds",
                "dockerEntrypoint", "dockerStartCmd", "gpuTypeIds", "ports")
_BOOL_FIELDS = ("globalNetworking", "interruptible", "locked", "supportPublicIp")
_INT_FIELDS = ("containerDiskInGb", "gpuCount", "minRAMPerGPU", "minVCPUPerGPU", "vcpuCount",
               "volumeInGb")
_STR_FIELDS = ("containerRegistryAuthId", "imageName", "name", "networkVolumeId",
               "templateId", "volumeMountPath")
_ENUMS: Mapping[str, tuple[str, ...]] = {
    "cloudType": ("SECURE", "COMMUNITY"),
    "computeType": ("GPU", "CPU"),
    "gpuTypePriority": ("availability", "custom"),
    "dataCenterPriority": ("availability", "custom"),
    "cpuFlavorPriority": ("availability", "custom"),
}


def _v1_error(status: int, message: str) -> EmulatorResponse:
    return EmulatorResponse(status, {"error": message, "status": status})


def _problem(status: int, title: str, detail: str) -> EmulatorResponse:
    return EmulatorResponse(status, {"title": title, "status": status, "detail": detail},
                            content_type="application/problem+json")


def _stamp(when: datetime) -> str:
    """The JavaScript Date text RunPod puts in lastStatusChange."""
    return when.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")


class RunPodDialect:
    """RunPod REST v1 over ``cloud``; built as ``RunPodDialect(cloud)``."""

    name = "runpod"
    catalog = RUNPOD_CATALOG
    id_prefix: str | None = "rp"

    def __init__(self, cloud: SimulatedCloud, *, delete_unknown_status: int = 404) -> None:
        self.cloud = cloud
        self.delete_unknown_status = delete_unknown_status
        self.graphql = RunPodGraphQL(self)

    # ---- Dialect --------------------------------------------------------------------------

    def unauthorized(self) -> EmulatorResponse:
        return EmulatorResponse(401, {"message": "Unauthorized: invalid or missing API key"})

    def rate_limited(self) -> EmulatorResponse:
        return _problem(429, "Too Many Requests", "rate limit exceeded for the minute window")

    def server_error(self) -> EmulatorResponse:
        return _v1_error(500, "Something went wrong. Please try again later or contact support.")

    def provider_error(self, request: EmulatorRequest, status: int, code: str,
                       message: str | None) -> EmulatorResponse:
        """``code`` in the envelope of the API asked: on ``/graphql`` an error list with
        ``extensions.code``; on ``/v2/…`` problem+json with ``code`` as its ``title`` (v2's
        titles are its codes: "Conflict", "Not Found" …); on v1 the documented
        ``UnauthorizedError {message}`` for that code, else v1's ``{"error", "status"}``
        body (v1 errors carry no code, so the message, or the code when there is none, is
        the error text)."""
        text = message or code
        if request.path.rstrip("/") == "/graphql":
            return EmulatorResponse(status, graphql_error_body(text, code))
        if request.path.startswith("/v2/"):
            return _problem(status, code, text)
        if code == "UnauthorizedError":
            return EmulatorResponse(status, {"message": message or "Unauthorized"})
        if status == 429:
            return _problem(429, "Too Many Requests", text)
        return _v1_error(status, text)

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        if request.path.rstrip("/") == "/graphql" and request.method == "POST":
            return self.graphql.handle(request)
        try:
            return self._route(request)
        except ProviderError as exc:
            return self._error(exc)

    # ---- routing -------------------------------------------------------------------------

    def _route(self, request: EmulatorRequest) -> EmulatorResponse:
        method, path = request.method, request.path.rstrip("/")
        include_machine = (request.param("includeMachine") or "").lower() == "true"
        if path == "/v1/pods":
            if method == "POST":
                return self._create(request)
            if method == "GET":
                return self._list(include_machine)
        elif path == "/v2/catalog/gpus" and method == "GET":
            return self._catalog(request)
        elif match := _POD_PATH.match(path):
            pid, action = match.group(1), match.group(2)
            if action is not None and method == "POST":
                return self._action(pid, action)
            if action is None and method == "GET":
                return self._get(pid, include_machine)
            if action is None and method == "DELETE":
                return self._delete(pid)
        # A path RunPod does not serve: a bare 404, not RunPod's error body, so a wrong
        # base_url reads as "unknown outcome" and never as "pod not found".
        return EmulatorResponse(404, "404 page not found")

    def _create(self, request: EmulatorRequest) -> EmulatorResponse:
        try:
            body = request.json()
        except ValueError:
            return _v1_error(400, "Invalid input: the body is not JSON")
        problem = self._check_create(body)
        if problem is not None:
            return _v1_error(400, f"Invalid input: {problem}")
        gpu_type, region = self._placement(body)
        now = self.cloud.clock.now()
        meta: dict[str, Any] = {
            "image": body.get("imageName") or "runpod/base:latest",
            "env": dict(body.get("env") or {}),
            "ports": list(body.get("ports") or ["8888/http", "22/tcp"]),
            "gpu_count": body.get("gpuCount", 1),
            "cloud_type": body.get("cloudType", "SECURE"),
            "interruptible": bool(body.get("interruptible", False)),
            "container_disk": body.get("containerDiskInGb", 50),
            "volume": body.get("volumeInGb", 20),
            "volume_mount_path": body.get("volumeMountPath", "/workspace"),
            "started": now,
            "event": f"Rented by User: {_stamp(now)}",
        }
        name = body.get("name", "my pod")
        pid = self.cloud.create_instance(
            instance_type=gpu_type, region=region, name=name,
            # the sim's notion of "ours" is its tag field; RunPod keeps the tag in the name
            tag=tag_from_name(name), meta=meta)
        inst = self.cloud.instance(pid)
        inst.meta["machine_id"] = f"m{pid.replace('-', '')[-10:]}"
        return EmulatorResponse(201, self._pod(inst, include_machine=False))

    def _list(self, include_machine: bool) -> EmulatorResponse:
        views = self.cloud.list_instances()  # an "empty" outage comes back as []: pass it on
        pods = [self._pod(self.cloud.instance(v.provider_instance_id), include_machine)
                for v in views]
        return EmulatorResponse(200, pods)

    def _get(self, pid: str, include_machine: bool) -> EmulatorResponse:
        if self.cloud.get(pid) is None:
            return _v1_error(404, "Pod not found.")
        return EmulatorResponse(200, self._pod(self.cloud.instance(pid), include_machine))

    def _delete(self, pid: str) -> EmulatorResponse:
        if not self._exists(pid):
            status = self.delete_unknown_status
            return _v1_error(status, "Pod not found." if status == 404 else "Invalid Pod ID.")
        self.cloud.terminate(pid)
        inst = self.cloud.instance(pid)
        inst.meta["event"] = f"Terminated by User: {_stamp(self.cloud.clock.now())}"
        return EmulatorResponse(204)

    def _action(self, pid: str, action: str) -> EmulatorResponse:
        commands: dict[str, tuple[Callable[[str], None], str]] = {
            "start": (self.cloud.start, "Resumed by User"),
            "stop": (self.cloud.stop, "Exited by User"),
            "restart": (self.cloud.restart, "Restarted by User"),
            "reset": (self.cloud.restart, "Reset by User"),  # the sim has no container reset
        }
        command, event = commands[action]
        command(pid)
        self.commanded(pid, event, started=action != "stop")
        return EmulatorResponse(200)  # v1 documents 200 with no body

    def commanded(self, pid: str, event: str, *, started: bool) -> SimInstance:
        """Note a user's command the cloud accepted (both APIs call this, so their
        ``lastStatusChange`` and ``lastStartedAt`` agree)."""
        inst = self.cloud.instance(pid)
        now = self.cloud.clock.now()
        inst.meta["event"] = f"{event}: {_stamp(now)}"
        if started:
            inst.meta["started"] = now
        # the plan this command made: until something else replans the pod (a kill, a
        # preemption), the phases it passes through keep this text
        inst.meta["event_epoch"] = inst.epoch
        return inst

    def _catalog(self, request: EmulatorRequest) -> EmulatorResponse:
        include = request.param("include")
        product = request.param("product")
        if (include is None) != (product is None):
            return _problem(400, "Bad Request",
                            "product is required with include=AVAILABILITY, and valid only with it")
        availability = include == "AVAILABILITY"
        gpus = []
        for offer in self.cloud.instance_types():
            memory = re.search(r"(\d+)\s*GB", offer.gpu_description or "")
            gpu: dict[str, Any] = {
                "id": offer.name,
                "name": re.sub(r"\s*\(.*\)$", "", offer.gpu_description or "") or offer.name,
                "pool": None,
                "manufacturer": "AMD" if offer.name.startswith("AMD") else "NVIDIA",
                "memory": int(memory.group(1)) if memory else 0,
                "secure": True,
                "community": True,
                "price": {"secure": offer.price_per_hour,
                          "community": round(offer.price_per_hour * 0.8, 4)},
                "maxCount": {"secure": max(offer.gpus or 1, 8), "community": 4},
            }
            if availability:
                gpu["availability"] = "HIGH" if offer.regions else "NONE"
                if offer.regions:
                    gpu["dataCenters"] = [{"id": r, "name": r, "availability": "HIGH"}
                                          for r in offer.regions]
            gpus.append(gpu)
        return EmulatorResponse(200, {"gpus": gpus})

    # ---- helpers -------------------------------------------------------------------------

    def _exists(self, pid: str) -> bool:
        try:
            return not self.cloud.instance(pid).removed
        except KeyError:
            return False

    @staticmethod
    def _check_create(body: object) -> str | None:
        """What RunPod would refuse in a PodCreateInput, or None."""
        if not isinstance(body, dict):
            return "the body must be a JSON object"
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            return f"additional properties {', '.join(unknown)} not allowed"
        problem = _field_type_problem(body)
        if problem is not None:
            return problem
        return _field_value_problem(body)

    def _placement(self, body: Mapping[str, Any]) -> tuple[str, str | None]:
        """GPU type and data center, in the caller's order of preference.

        With one type and at most one data center the cloud decides (and raises the
        capacity error); with several, the first pair the catalog offers wins.
        """
        types: list[str] = body["gpuTypeIds"]
        centers: list[str] = body.get("dataCenterIds") or []
        if len(types) == 1 and len(centers) <= 1:
            return types[0], centers[0] if centers else None
        offers = {o.name: o for o in self.cloud.instance_types()}
        for gpu_type in types:
            offer = offers.get(gpu_type)
            if offer is None:
                continue
            for center in centers or list(offer.regions):
                if center in offer.regions:
                    return gpu_type, center
        return types[0], centers[0] if centers else None

    def _pod(self, inst: SimInstance, include_machine: bool) -> dict[str, Any]:
        desired, attached, event = RUNPOD_PHASES.get(inst.phase, (inst.phase, False, None))
        if inst.raw_override is not None:
            desired = inst.raw_override
        meta = inst.meta
        now = self.cloud.clock.now()
        if event is None:
            last_change = str(meta.get("event") or f"Rented by User: {_stamp(now)}")
        else:
            # Keep the text of the action that led here; a phase the sim reached by
            # itself (a kill, a preemption) gets its own text, stamped when first seen.
            last_change = str(meta.get("event", ""))
            if not last_change.startswith(event.split(":")[0]) and (
                meta.get("event_epoch") != inst.epoch
            ):
                last_change = f"{event}: {_stamp(now)}"
                meta["event"] = last_change
        tcp_ports = [int(p.split("/")[0]) for p in meta.get("ports", ["22/tcp"])
                     if p.endswith("/tcp")]
        mappings = {str(port): _SSH_PUBLIC_PORT + i for i, port in enumerate(tcp_ports)}
        gpu_count = int(meta.get("gpu_count", 1))
        cost = round(inst.price_per_hour * gpu_count, 4)
        started: datetime = meta.get("started", now)
        pod: dict[str, Any] = {
            "id": inst.id,
            "name": inst.name,
            "desiredStatus": desired,
            "lastStatusChange": last_change,
            "lastStartedAt": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "publicIp": inst.ip if attached else "",
            "portMappings": mappings if attached else {},
            "costPerHr": cost,
            "adjustedCostPerHr": cost,
            "interruptible": bool(meta.get("interruptible", False)),
            "machineId": meta.get("machine_id", ""),
            "consumerUserId": "user_emulated",
            "image": meta.get("image", "runpod/base:latest"),
            "env": dict(meta.get("env", {})),
            "ports": list(meta.get("ports", ["22/tcp"])),
            "gpu": {"id": inst.instance_type, "count": gpu_count,
                    "displayName": inst.instance_type},
            "containerDiskInGb": meta.get("container_disk", 50),
            "volumeInGb": meta.get("volume", 20),
            "volumeMountPath": meta.get("volume_mount_path", "/workspace"),
            "memoryInGb": 62 * gpu_count,
            "vcpuCount": 8 * gpu_count,
            "locked": False,
        }
        if include_machine:
            pod["machine"] = {
                "gpuTypeId": inst.instance_type,
                "dataCenterId": inst.region,
                "location": inst.region,
                "secureCloud": meta.get("cloud_type", "SECURE") == "SECURE",
                "supportPublicIp": True,
                "costPerHr": cost,
                "currentPricePerGpu": inst.price_per_hour,
                "gpuDisplayName": inst.instance_type,
            }
        return pod

    @staticmethod
    def _error(exc: ProviderError) -> EmulatorResponse:
        if isinstance(exc, InsufficientCapacity):
            return _v1_error(500, "create pod: There are no instances currently available")
        if isinstance(exc, InsufficientCredit):
            return _v1_error(400, "create pod: Insufficient balance: add funds to deploy this pod")
        if isinstance(exc, QuotaExceeded):
            return _v1_error(400, "create pod: this deployment would exceed your spend limit")
        if isinstance(exc, ProviderNotFound):
            return _v1_error(404, "Pod not found.")
        if isinstance(exc, InvalidRequest):
            return _v1_error(400, f"Invalid input: {_plain(exc)}")
        if isinstance(exc, RateLimited):
            response = _problem(429, "Too Many Requests", "rate limit exceeded")
            response.headers["Retry-After"] = "1"
            return response
        if isinstance(exc, ProviderTimeout):
            return _v1_error(504, "upstream request timeout")
        return _v1_error(503, "service unavailable")  # ProviderUnavailable and the rest


def _plain(exc: ProviderError) -> str:
    """The sim's message without our ``provider:`` prefix."""
    text = str(exc)
    prefix = f"{exc.provider}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _field_type_problem(body: Mapping[str, Any]) -> str | None:
    """The first PodCreateInput field of the wrong JSON type, as RunPod words it."""
    for key in _LIST_FIELDS:
        value = body.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return f"{key} must be an array of strings"
    for key in _BOOL_FIELDS:
        if key in body and not isinstance(body[key], bool):
            return f"{key} must be a boolean"
    for key in _INT_FIELDS:
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key} must be an integer"
    for key in _STR_FIELDS:
        if key in body and not isinstance(body[key], str):
            return f"{key} must be a string"
    for key, allowed in _ENUMS.items():
        if key in body and body[key] not in allowed:
            return f"{key} must be one of {', '.join(allowed)}"
    return None


def _field_value_problem(body: Mapping[str, Any]) -> str | None:
    """The first well-typed PodCreateInput field whose value RunPod refuses."""
    if len(body.get("name", "")) > 191:
        return "name is longer than 191 characters"
    if not body.get("imageName") and not body.get("templateId"):
        return "imageName is required"
    if body.get("computeType", "GPU") != "GPU":
        return "CPU pods are not offered by this emulator"
    if not body.get("gpuTypeIds"):
        return "gpuTypeIds is required for a GPU pod"
    if body.get("gpuCount", 1) < 1:
        return "gpuCount must be at least 1"
    for port in body.get("ports") or ():
        if not _PORT.match(port):
            return f"port {port!r} is not [port number]/[http|tcp]"
    env = body.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(isinstance(v, str) for v in env.values())
    ):
        return "env must be an object of strings"
    for key in ("containerDiskInGb", "volumeInGb"):
        value = body.get(key)
        if value is not None and value < 0:
            return f"{key} must not be negative"
    return None
