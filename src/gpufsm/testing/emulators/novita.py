"""Novita's GPU-instance API (``/gpu-instance/openapi/v1``) over a SimulatedCloud.

Speaks the shapes of tests/fixtures/provider-api/novita/NOTES.md: bare JSON objects (no
``data`` envelope except ``/products``), counts as strings, page-number listings with a
``total``, errors as ``{"code", "reason", "message"}`` with not-found as a **400**, and an
empty 200 body on delete. Unknown paths get a bare 404 text, as a web server would.

How sim phases read in Novita's words (``raw_override`` is passed through verbatim):

=============  ===========================================================
provisioning   ``toCreate``
booting        ``pulling`` on first boot, ``starting`` after a start
rebooting      ``restarting``
running        ``running``
stopping       ``stopping``
stopped        ``exited`` (Novita's normal stopped state)
unhealthy      ``running`` + statusError "abnormal instance status"
preempted      ``exited`` + spotStatus ``reclaiming``
terminating    ``removing``
terminated     ``removed``
=============  ===========================================================

A start, stop or restart reads ``toStart``/``toStop``/``toRestart`` from its acceptance
until the instance takes its first step (the sim's short command delay).

Product prices are served in Novita's integer unit (1/100000 USD per GPU-hour, the
adapter's documented assumption), from ``cloud.instance_types()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pydantic

from gpufsm.adapters import InstanceTypeOffer, tag_from_name
from gpufsm.adapters._novita_models import CreateInstanceRequest
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
)
from gpufsm.testing._sim import SimInstance, SimulatedCloud
from gpufsm.testing.emulators._server import EmulatorRequest, EmulatorResponse

__all__ = ["NOVITA_CATALOG", "NOVITA_PHASE_WORDS", "PREFIX", "PRICE_UNITS_PER_USD",
           "NovitaDialect"]

PREFIX = "/gpu-instance/openapi/v1"
PRICE_UNITS_PER_USD = 100_000
ABNORMAL = "abnormal instance status"
RESERVED_PORTS = frozenset({2222, 2223, 2224})

#: Sim phase → Novita ``status`` (booting is refined by how the instance got there).
NOVITA_PHASE_WORDS: dict[str, str] = {
    "provisioning": "toCreate",
    "booting": "pulling",
    "rebooting": "restarting",
    "running": "running",
    "stopping": "stopping",
    "stopped": "exited",
    "unhealthy": "running",
    "preempted": "exited",
    "terminating": "removing",
    "terminated": "removed",
}

#: What ``gpufsm emulator --dialect novita`` sells: products (price per GPU, 1-8 GPUs),
#: some also sold as spot. A product has one price in all its clusters; the last one is
#: sold out everywhere.
NOVITA_CATALOG: tuple[InstanceTypeOffer, ...] = (
    InstanceTypeOffer("novita", "RTX 4090 24GB", 0.35, ("us-ca-01", "eu-de-01"), 1,
                      "RTX 4090"),
    InstanceTypeOffer("novita", "A100 PCIe 80GB", 1.40, ("us-ca-01", "eu-de-01"), 1,
                      "A100", spot_price_per_hour=0.70),
    InstanceTypeOffer("novita", "H100 SXM 80GB", 2.56, ("us-ca-01",), 1, "H100"),
    InstanceTypeOffer("novita", "A100 SXM 80GB", 1.60, (), 1, "A100"),
)

_UP = frozenset({"running", "rebooting", "stopping", "unhealthy"})

#: A command's word between its acceptance and the sim's first step.
_PENDING = {"start": "toStart", "stop": "toStop", "restart": "toRestart"}
#: How long that word lasts at most: the sim's shortest first step after a command (a
#: restart comes back to ``running`` in the same epoch, so the phase alone cannot tell).
_PENDING_SECONDS = 0.1


def _error(status: int, reason: str, message: str) -> EmulatorResponse:
    return EmulatorResponse(status, {"code": status, "reason": reason, "message": message})


def _product_id(name: str) -> str:
    return "prod-" + hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:12]


class NovitaDialect:
    """Novita's v1 GPU-instance API; one instance per SimulatedCloud."""

    name = "novita"
    catalog = NOVITA_CATALOG
    id_prefix: str | None = None

    def __init__(self, cloud: SimulatedCloud) -> None:
        self.cloud = cloud
        self._routes: dict[tuple[str, str], Callable[[EmulatorRequest], EmulatorResponse]] = {
            ("POST", "/gpu/instance/create"): self._create,
            ("GET", "/gpu/instances"): self._list,
            ("GET", "/gpu/instance"): self._get,
            ("POST", "/gpu/instance/start"): self._start,
            ("POST", "/gpu/instance/stop"): self._stop,
            ("POST", "/gpu/instance/restart"): self._restart,
            ("POST", "/gpu/instance/delete"): self._delete,
            ("GET", "/products"): self._products,
        }

    # ---- Dialect ------------------------------------------------------------------------

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        route = None
        if request.path.startswith(PREFIX):
            route = self._routes.get((request.method, request.path[len(PREFIX):]))
        if route is None:
            return EmulatorResponse(404, "404 page not found")
        try:
            return route(request)
        except ProviderError as exc:
            return self._sim_error(exc, request)

    def unauthorized(self) -> EmulatorResponse:
        # The GPU table of the error-code doc gives UNAUTHORIZED as a 401, and novita-sdk
        # (whose models stand for the live API) reads a bad key as a 401. The notes' 403
        # INVALID_API_KEY was seen on the model API, another gateway: not spoken here.
        return _error(401, "UNAUTHORIZED", "invalid api key")

    def rate_limited(self) -> EmulatorResponse:
        return _error(429, "RATE_LIMIT_EXCEEDED", "rate limit exceeded")

    def server_error(self) -> EmulatorResponse:
        return _error(500, "UNKNOWN", "internal error")

    def provider_error(self, request: EmulatorRequest, status: int, code: str,
                       message: str | None) -> EmulatorResponse:
        """Any documented ``reason`` (the notes' GPU table) in Novita's error body, so a
        test can make one happen that the simulated cloud has no cause for."""
        return _error(status, code, message or code.replace("_", " ").lower())

    # ---- routes -------------------------------------------------------------------------

    def _create(self, request: EmulatorRequest) -> EmulatorResponse:
        body = self._json(request)
        if not isinstance(body, dict):
            return _error(400, "REQUEST", "request body must be a JSON object")
        try:
            req = CreateInstanceRequest.model_validate(body)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            return _error(400, "VALIDATOR_PARAM", f"{loc}: {first['msg']}")
        ports = self._ports(req.ports)
        if ports is None:
            return _error(400, "VALIDATOR_PARAM", f"ports: cannot parse {req.ports!r}")
        if RESERVED_PORTS & {p for p, _ in ports}:
            return _error(400, "VALIDATOR_PARAM", "ports: 2222-2224 are reserved")
        if len(ports) + len(req.tools or ()) > 15:
            return _error(400, "VALIDATOR_PARAM", "ports plus tools must be <= 15")
        offer = self._offers().get(req.productId)
        if offer is None:
            return _error(400, "RESOURCE_NOT_FOUND", f"product {req.productId} not found")
        billing = req.billingMode or "onDemand"
        if billing not in self._product(offer)["billingMethods"]:
            return _error(400, "UNSUPPORTED_BILLING_MODE",
                          f"product {req.productId} is not sold {billing}")
        name = req.name or ""
        pid = self.cloud.create_instance(
            instance_type=offer.name,
            region=req.clusterId or None,
            name=name,
            tag=tag_from_name(name),
            meta={
                "productId": req.productId,
                "imageUrl": req.imageUrl,
                "gpuNum": req.gpuNum,
                "rootfsSize": req.rootfsSize,
                "kind": req.kind,
                "billingMode": billing,
                "command": req.command or "",
                "ports": ports,
                "envs": [e.model_dump() for e in req.envs or ()],
                "boot_word": "pulling",
            },
        )
        return EmulatorResponse(200, {"id": pid})

    def _list(self, request: EmulatorRequest) -> EmulatorResponse:
        # The docs mark pageSize and pageNum required, yet novita-sdk sends neither by
        # default and Novita's own MCP server sends "pageNumber": a live API that refused
        # their listings would have been noticed. So absent means the defaults (10 per
        # page, page 1; pageNum 0 reads as 1); present and not a number is refused.
        size = self._int_param(request, "pageSize", 10)
        num = self._int_param(request, "pageNum", 1)
        if size is None or num is None:
            return _error(400, "VALIDATOR_PARAM", "pageSize and pageNum must be integers >= 0")
        size = size or 10
        num = max(num, 1)
        views = self.cloud.list_instances()  # an "empty" outage lies here, on purpose
        items = [self._instance(self.cloud.instance(v.provider_instance_id)) for v in views]
        name = request.param("name")
        if name:
            items = [i for i in items if name.casefold() in str(i["name"]).casefold()]
        status = request.param("status")
        if status:
            items = [i for i in items if i["status"] == status]
        page = items[(num - 1) * size: num * size]
        return EmulatorResponse(200, {"instances": page, "total": len(items)})

    def _get(self, request: EmulatorRequest) -> EmulatorResponse:
        pid = request.param("instanceId")
        if not pid:
            return _error(400, "VALIDATOR_PARAM", "instanceId is required")
        if self.cloud.get(pid) is None:
            return _error(400, "RESOURCE_NOT_FOUND", f"instance {pid} not found")
        return EmulatorResponse(200, self._instance(self.cloud.instance(pid)))

    def _start(self, request: EmulatorRequest) -> EmulatorResponse:
        return self._command(request, "start")

    def _stop(self, request: EmulatorRequest) -> EmulatorResponse:
        return self._command(request, "stop")

    def _restart(self, request: EmulatorRequest) -> EmulatorResponse:
        return self._command(request, "restart")

    def _delete(self, request: EmulatorRequest) -> EmulatorResponse:
        pid = self._instance_id(request)
        if pid is None:
            return _error(400, "VALIDATOR_PARAM", "instanceId is required")
        if self._sim(pid) is None:
            return _error(400, "RESOURCE_NOT_FOUND", f"instance {pid} not found")
        self.cloud.terminate(pid)
        return EmulatorResponse(200, None)  # empty body, as SkyPilot observed

    def _products(self, request: EmulatorRequest) -> EmulatorResponse:
        offers = list(self._offers().values())
        name = request.param("productName")
        cluster = request.param("clusterId")
        billing = request.param("billingMethod")
        data = []
        for offer in offers:
            product = self._product(offer)
            if name and name.casefold() not in offer.name.casefold():
                continue
            if cluster and cluster not in offer.regions:
                continue
            if billing and billing not in product["billingMethods"]:
                continue
            data.append(product)
        return EmulatorResponse(200, {"data": data})

    # ---- helpers ------------------------------------------------------------------------

    def _command(self, request: EmulatorRequest, op: str) -> EmulatorResponse:
        pid = self._instance_id(request)
        if pid is None:
            return _error(400, "VALIDATOR_PARAM", "instanceId is required")
        getattr(self.cloud, op)(pid)
        inst = self._sim(pid)
        if inst is not None:
            if op == "start":
                inst.meta["boot_word"] = "starting"
            # Accepted, not begun: Novita says toStop / toStart / toRestart until the
            # instance takes its first step (at most _PENDING_SECONDS).
            inst.meta["pending"] = (_PENDING[op], inst.phase, inst.epoch,
                                    self.cloud.clock.monotonic() + _PENDING_SECONDS)
        return EmulatorResponse(200, {})

    def _sim(self, pid: str) -> SimInstance | None:
        try:
            inst = self.cloud.instance(pid)
        except KeyError:
            return None
        return None if inst.removed else inst

    def _offers(self) -> dict[str, InstanceTypeOffer]:
        return {_product_id(o.name): o for o in self.cloud.instance_types()}

    def _product(self, offer: InstanceTypeOffer) -> dict[str, Any]:
        methods = ["onDemand", "monthly"]
        if offer.spot_price_per_hour:
            methods.append("spot")
        return {
            "id": _product_id(offer.name),
            "name": offer.name,
            "cpuPerGpu": 16,
            "memoryPerGpu": 62,
            "diskPerGpu": 250,
            "availableDeploy": bool(offer.regions),
            "minRootFS": 10,
            "maxRootFS": 6144,
            "minLocalStorage": 0,
            "maxLocalStorage": 0,
            "regions": list(offer.regions),
            "price": round(offer.price_per_hour * PRICE_UNITS_PER_USD),
            "monthlyPrice": [{"price": round(offer.price_per_hour * PRICE_UNITS_PER_USD * 600),
                              "month": 1}],
            "billingMethods": methods,
            "spotPrice": str(round((offer.spot_price_per_hour or 0) * PRICE_UNITS_PER_USD)),
        }

    def _instance(self, inst: SimInstance) -> dict[str, Any]:
        meta = inst.meta
        status, error, spot = self._status(inst)
        up = inst.phase in _UP and not inst.raw_override
        ip = inst.ip if up else ""
        ports: list[tuple[int, str]] = meta.get("ports", [])
        mappings = [{"port": port, "endpoint": f"{ip}:{40000 + port % 20000}", "type": kind}
                    for port, kind in ports] if up else []
        ssh = next((m for m in mappings if m["port"] == 22), None)
        return {
            "id": inst.id,
            "name": inst.name,
            "clusterId": inst.region,
            "clusterName": inst.region,
            "productId": meta.get("productId", _product_id(inst.instance_type)),
            "productName": inst.instance_type,
            "imageUrl": meta.get("imageUrl", ""),
            "imageAuthId": "",
            "command": meta.get("command", ""),
            "entrypoint": "",
            "cpuNum": str(16 * int(meta.get("gpuNum", 1))),
            "memory": str(62 * int(meta.get("gpuNum", 1))),
            "gpuNum": str(meta.get("gpuNum", 1)),
            "rootfsSize": meta.get("rootfsSize", 60),
            "status": status,
            "statusError": error,
            "network": {"id": "", "ip": ip},
            "portMappings": mappings,
            "volumeMounts": [{"type": "local", "size": str(meta.get("rootfsSize", 60)),
                              "id": "", "mountPath": "/"}],
            # The docs type ``node`` as object[]; novita-sdk (run against the live API)
            # parses an object, and would refuse a list: an object it is.
            "node": {"maxRootfsSize": 6144},
            "jobs": [],
            "envs": meta.get("envs", []),
            "connectComponentSSH": {
                "sshCommand": f"ssh root@{ip} -p {str(ssh['endpoint']).rsplit(':', 1)[1]}"
                if ssh else "",
                "password": "",
                "isRunning": ssh is not None,
            },
            # The docs' shapes; nothing behind them here, so nothing runs.
            "connectComponentWebTerminal": {"address": "", "username": "", "password": "",
                                            "isRunning": False},
            "connectComponentJupyter": {"port": 0, "address": "", "isRunning": False},
            "connectComponentLog": {"systemLogAddress": "", "instanceLogAddress": "",
                                    "isRunning": False},
            "kind": meta.get("kind", "gpu"),
            "billingMode": meta.get("billingMode", "onDemand"),
            "endTime": "-1",
            "freeStorageSize": 60,
            "keepDataDay": 0,
            "spotStatus": spot,
            "spotReclaimTime": (str(int(self.cloud.clock.now().timestamp()))
                                if spot == "reclaiming" else "0"),
        }

    def _status(self, inst: SimInstance) -> tuple[str, dict[str, str], str]:
        """(status, statusError, spotStatus) for the instance as it stands."""
        no_error = {"state": "", "message": ""}
        if inst.raw_override:
            return inst.raw_override, no_error, ""
        phase = inst.phase
        word = NOVITA_PHASE_WORDS.get(phase, phase)
        if phase == "booting":
            word = str(inst.meta.get("boot_word", "pulling"))
        pending = inst.meta.get("pending")
        if pending is not None and tuple(pending[1:3]) == (phase, inst.epoch) and (
            self.cloud.clock.monotonic() < pending[3]
        ):
            word = str(pending[0])
        # spotStatus is for spot billing only ("" otherwise, which novita-sdk reads as
        # None); a preemption shows as "reclaiming" whatever the billing.
        spot = "running" if inst.meta.get("billingMode") == "spot" else ""
        if phase == "unhealthy":
            message = str(inst.meta.get("error_message", "container exited unexpectedly"))
            return word, {"state": ABNORMAL, "message": message}, spot
        if phase == "preempted":
            return word, no_error, "reclaiming"
        return word, no_error, spot

    def _sim_error(self, exc: ProviderError, request: EmulatorRequest) -> EmulatorResponse:
        msg = str(exc)
        if isinstance(exc, InsufficientCapacity):
            return _error(400, "INSUFFICIENT_RESOURCE", msg)
        if isinstance(exc, InsufficientCredit):
            return _error(400, "BALANCE_NOT_ENOUGH", msg)
        if isinstance(exc, QuotaExceeded):
            return _error(400, "CREATE_INSTANCE_LIMIT",
                          "please recharge or delete other instances")
        if isinstance(exc, ProviderNotFound):
            return _error(400, "RESOURCE_NOT_FOUND", msg)
        if isinstance(exc, InvalidRequest):
            creating = request.path.endswith("/create")
            return _error(400, "VALIDATOR_PARAM" if creating else "CONFLICT", msg)
        if isinstance(exc, AuthError):
            return self.unauthorized()
        if isinstance(exc, RateLimited):
            return self.rate_limited()
        if isinstance(exc, ProviderTimeout):
            # What a gateway says when the backend took too long: not Novita's JSON.
            return EmulatorResponse(504, "upstream request timeout")
        if isinstance(exc, ProviderUnavailable):
            return self.server_error()
        return _error(500, "UNKNOWN", msg)

    @staticmethod
    def _json(request: EmulatorRequest) -> Any:
        try:
            return request.json()
        except (ValueError, UnicodeDecodeError):
            return None

    def _instance_id(self, request: EmulatorRequest) -> str | None:
        body = self._json(request)
        if not isinstance(body, dict):
            return None
        pid = body.get("instanceId")
        return pid if isinstance(pid, str) and pid else None

    @staticmethod
    def _int_param(request: EmulatorRequest, name: str, default: int) -> int | None:
        """The parameter as an integer >= 0, ``default`` when absent, None when malformed."""
        value = request.param(name)
        if value is None:
            return default
        if not value.strip().isdigit():
            return None
        return int(value)

    @staticmethod
    def _ports(spec: str | None) -> list[tuple[int, str]] | None:
        """``"80/http, 3306/tcp"`` → [(80, "http"), (3306, "tcp")]; None if malformed."""
        if not spec or not spec.strip():
            return []
        out: list[tuple[int, str]] = []
        for part in spec.split(","):
            port, _, kind = part.strip().partition("/")
            if not port.isdigit() or kind not in ("tcp", "http", "udp"):
                return None
            out.append((int(port), kind))
        return out
