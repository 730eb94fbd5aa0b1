"""RunPod's GraphQL API (``POST /graphql`` on ``api.runpod.io``), the subset the official
``runpod`` Python SDK's pod functions send, over the same SimulatedCloud as the REST
v1 routes: a pod made here is on ``GET /v1/pods`` and one made there is in
``myself { pods }``.

Served: ``myself { id pubKey networkVolumes pods }``, ``pod(input: {podId})``,
``gpuTypes(input: {id | ids})`` with ``lowestPrice(input: {gpuCount …})``, and the
mutations ``podFindAndDeployOnDemand``, ``podStop``, ``podResume`` and ``podTerminate``
(which returns the ``Void`` scalar, so ``null``). The types and field names are RunPod's
(graphql-spec.runpod.io); a field outside this subset is refused by validation, as an
unknown field is by RunPod, so a client asking for one fails here as it would there.

How a pod reads: ``desiredStatus`` is the same word the v1 pod shows (RUNNING, EXITED,
TERMINATED; a ``set_raw_status`` word verbatim, and RunPod's GraphQL ``PodStatus`` enum
also has CREATED, RESTARTING, PAUSED and DEAD: any other word cannot be serialised and
answers a field error, as a real GraphQL server would). ``runtime`` is ``null`` until
the container is up (when v1 shows ``publicIp``/``portMappings``), then lists the ports:
each TCP port on the public address, each HTTP port behind RunPod's proxy.

Answers follow Apollo Server, which RunPod runs: a query that does not parse or does not
validate is HTTP 400 ``{"errors": [{message, locations, extensions: {code:
GRAPHQL_PARSE_FAILED | GRAPHQL_VALIDATION_FAILED}}]}`` with no ``data``; an error while
resolving is HTTP 200 with ``data`` (the failed field ``null``) and ``errors`` carrying
the field's ``path`` and ``extensions.code`` ``INTERNAL_SERVER_ERROR``. The messages are
the ones RunPod is seen to send where known (capacity on create and on resume, the
generic "Something went wrong"); credit and spend-limit texts are not published, so
theirs carry the phrases the REST adapter recognises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    build_schema,
    execute,
    parse,
    validate,
)

from gpufsm.adapters import tag_from_name
from gpufsm.errors import (
    InsufficientCapacity,
    InsufficientCredit,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    QuotaExceeded,
    RateLimited,
)
from gpufsm.testing._sim import SimInstance
from gpufsm.testing.emulators._server import EmulatorRequest, EmulatorResponse

if TYPE_CHECKING:
    from gpufsm.testing.emulators.runpod import RunPodDialect

__all__ = ["GRAPHQL_MESSAGES", "SDL", "RunPodGraphQL", "graphql_error_body"]

SDL = """
"Nothing: podTerminate answers null."
scalar Void

enum PodStatus { CREATED RUNNING RESTARTING EXITED PAUSED DEAD TERMINATED }
enum PodType { INTERRUPTABLE RESERVED BID BACKGROUND }
enum CloudTypeEnum { SECURE COMMUNITY ALL }
enum ComputeType { CPU GPU }

type PodRuntimePorts {
  ip: String
  isIpPublic: Boolean
  privatePort: Int
  publicPort: Int
  type: String
}

type PodRuntimeGpus { id: String gpuUtilPercent: Float memoryUtilPercent: Float }
type PodRuntimeContainer { cpuPercent: Float memoryPercent: Float }

type PodRuntime {
  container: PodRuntimeContainer
  gpus: [PodRuntimeGpus]
  ports: [PodRuntimePorts]
  uptimeInSeconds: Int
}

type PodMachineInfo {
  id: String
  podHostId: String
  gpuDisplayName: String
  gpuTypeId: String
  dataCenterId: String
  location: String
  secureCloud: Boolean
  supportPublicIp: Boolean
  costPerHr: Float
  currentPricePerGpu: Float
}

type Pod {
  id: String!
  name: String
  desiredStatus: PodStatus
  lastStatusChange: String
  lastStartedAt: String
  createdAt: String
  imageName: String
  env: [String]
  dockerArgs: String
  dockerId: String
  templateId: String
  ports: String
  port: Int
  gpuCount: Int
  vcpuCount: Float
  memoryInGb: Float
  containerDiskInGb: Int
  volumeInGb: Float
  volumeMountPath: String
  costPerHr: Float
  adjustedCostPerHr: Float
  podType: PodType
  machineId: String
  consumerUserId: String
  locked: Boolean
  uptimeSeconds: Int
  runtime: PodRuntime
  machine: PodMachineInfo
}

type LowestPrice {
  gpuName: String
  gpuTypeId: String
  minimumBidPrice: Float
  uninterruptablePrice: Float
  minMemory: Int
  minVcpu: Float
  stockStatus: String
  totalCount: Int
  rentedCount: Int
  rentalPercentage: Float
}

input GpuLowestPriceInput {
  gpuCount: Int
  dataCenterId: String
  countryCode: String
  minDisk: Int
  minMemoryInGb: Int
  minVcpuCount: Int
  minDownload: Int
  minUpload: Int
  secureCloud: Boolean
  supportPublicIp: Boolean
  totalDisk: Int
  cudaVersion: String
  allowedCudaVersions: [String]
  includeAiApi: Boolean
}

type GpuType {
  id: String!
  displayName: String
  manufacturer: String
  memoryInGb: Int
  cudaCores: Int
  secureCloud: Boolean
  communityCloud: Boolean
  securePrice: Float
  communityPrice: Float
  secureSpotPrice: Float
  communitySpotPrice: Float
  oneWeekPrice: Float
  oneMonthPrice: Float
  threeMonthPrice: Float
  sixMonthPrice: Float
  maxGpuCount: Int
  maxGpuCountSecureCloud: Int
  maxGpuCountCommunityCloud: Int
  minPodGpuCount: Int
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}

input GpuTypeFilter { id: String ids: [String] }

type NetworkVolume { id: String name: String size: Int dataCenterId: String }

type User {
  id: String
  pubKey: String
  networkVolumes: [NetworkVolume]
  pods: [Pod]
}

input PodFilter { podId: String! }
input EnvironmentVariableInput { key: String! value: String! }

input PodFindAndDeployOnDemandInput {
  aiApiId: String
  allowedCudaVersions: [String]
  cloudType: CloudTypeEnum
  computeType: ComputeType
  containerDiskInGb: Int
  containerRegistryAuthId: String
  countryCode: String
  cudaVersion: String
  dataCenterId: String
  deployCost: Float
  dockerArgs: String
  env: [EnvironmentVariableInput]
  gpuCount: Int
  gpuTypeId: String
  gpuTypeIdList: [String]
  imageName: String
  instanceIds: [String]
  minDisk: Int
  minDownload: Int
  minMemoryInGb: Int
  minUpload: Int
  minVcpuCount: Int
  name: String
  networkVolumeId: String
  port: Int
  ports: String
  startJupyter: Boolean
  startSsh: Boolean
  stopAfter: String
  supportPublicIp: Boolean
  templateId: String
  terminateAfter: String
  volumeInGb: Int
  volumeKey: String
  volumeMountPath: String
}

input PodStopInput { podId: String! incrementVersion: Boolean }
input PodResumeInput {
  podId: String!
  gpuCount: Int
  syncMachine: Boolean
  computeType: ComputeType
}
input PodTerminateInput { podId: String! }

type Query {
  myself: User
  pod(input: PodFilter): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}

type Mutation {
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput): Pod
  podStop(input: PodStopInput!): Pod
  podResume(input: PodResumeInput!): Pod
  podTerminate(input: PodTerminateInput!): Void
}
"""

#: What each error answers over GraphQL, by (error class, operation). Capacity on create,
#: capacity on resume and the generic text are RunPod's own (seen in runpod-python
#: issues #239 and #168, and in its users' reports); the rest are ours.
GRAPHQL_MESSAGES: Mapping[str, str] = {
    "capacity": "There are no longer any instances available with the requested "
                "specifications. Please refresh and try again.",
    "capacity_resume": "There are not enough free GPUs on the host machine to start this pod.",
    "credit": "Your balance is too low to deploy this pod. Please add funds to your account.",
    "quota": "This deployment would exceed your spend limit. Please contact support to "
             "raise it.",
    "not_found": "Pod not found.",
    "rate_limit": "Too many requests. Please slow down and try again.",
    "internal": "Something went wrong. Please try again later or contact support.",
}

_INTERNAL = "INTERNAL_SERVER_ERROR"
_PORT = re.compile(r"^(\d{1,5})/(tcp|http)$")
_PROXY_PORT_BASE = 60000  # HTTP ports are reached through RunPod's proxy, not the pod's IP


class _Refused(Exception):
    """An answer outside GraphQL's own: a 429 the SDK sees as HTTP, not as an error list."""

    def __init__(self, response: EmulatorResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _gql_error(message: str, code: str = _INTERNAL) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def _display_name(gpu_type_id: str) -> str:
    """RunPod's short GPU name on a pod's machine ("NVIDIA A40" → "A40")."""
    return re.sub(r"^(NVIDIA|AMD)\s+", "", gpu_type_id)


def _stamp(when: datetime) -> str:
    return when.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")


class RunPodGraphQL:
    """The ``/graphql`` endpoint of ``dialect`` (a RunPodDialect), over its cloud."""

    def __init__(self, dialect: RunPodDialect) -> None:
        self.dialect = dialect
        self.cloud = dialect.cloud
        self.schema: GraphQLSchema = build_schema(SDL)
        self._bind()

    # ---- HTTP ----------------------------------------------------------------------------

    def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        """One ``POST /graphql``: parse, validate, execute, answer as Apollo Server does."""
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _bad_request("POST body missing, invalid Content-Type, or JSON object "
                                "has no keys.", "BAD_REQUEST")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            return _bad_request("GraphQL operations must contain a non-empty `query`.",
                                "BAD_REQUEST")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return _bad_request("`variables` in a POST body should be an object.",
                                "BAD_REQUEST")
        try:
            document = parse(query)
        except GraphQLError as exc:
            return _errors(400, [exc], "GRAPHQL_PARSE_FAILED")
        problems = validate(self.schema, document)
        if problems:
            return _errors(400, problems, "GRAPHQL_VALIDATION_FAILED")
        result = execute(self.schema, document, variable_values=variables,
                         operation_name=body.get("operationName"))
        assert isinstance(result, ExecutionResult)  # every resolver is synchronous
        for error in result.errors or ():
            if isinstance(error.original_error, _Refused):
                return error.original_error.response
        if result.errors and result.data is None and not _located(result.errors):
            # a bad variable or operation name: refused before any field ran
            return _errors(400, result.errors, "BAD_USER_INPUT")
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [_formatted(e) for e in result.errors]
        return EmulatorResponse(200, answer)

    # ---- resolvers ---------------------------------------------------------------------

    def _bind(self) -> None:
        resolvers: dict[tuple[str, str], Callable[..., Any]] = {
            ("Query", "myself"): lambda _src, _info: {
                "id": "user_emulated", "pubKey": "", "networkVolumes": []},
            ("User", "pods"): self._pods,
            ("Query", "pod"): self._pod,
            ("Query", "gpuTypes"): self._gpu_types,
            ("GpuType", "lowestPrice"): self._lowest_price,
            ("Mutation", "podFindAndDeployOnDemand"): self._deploy,
            ("Mutation", "podStop"): self._stop,
            ("Mutation", "podResume"): self._resume,
            ("Mutation", "podTerminate"): self._terminate,
        }
        for (type_name, field_name), resolve in resolvers.items():
            owner = self.schema.type_map[type_name]
            owner.fields[field_name].resolve = _guarded(resolve)  # type: ignore[attr-defined]

    def _pods(self, _user: Any, _info: Any) -> list[dict[str, Any]]:
        views = self.cloud.list_instances()
        return [self._view(self.cloud.instance(v.provider_instance_id)) for v in views]

    def _pod(self, _src: Any, _info: Any,
             input: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        pid = str((input or {}).get("podId", ""))
        if not pid or self.cloud.get(pid) is None:
            return None  # RunPod answers a null pod, not an error, for an id it does not know
        return self._view(self.cloud.instance(pid))

    def _gpu_types(self, _src: Any, _info: Any,
                   input: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        wanted: set[str] | None = None
        if input and input.get("id") is not None:
            wanted = {str(input["id"])}
        if input and input.get("ids") is not None:
            wanted = (wanted or set()) | {str(i) for i in input["ids"]}
        gpus = []
        for offer in self.cloud.instance_types():
            if wanted is not None and offer.name not in wanted:
                continue
            price = offer.price_per_hour
            spot = offer.spot_price_per_hour or round(price * 0.5, 4)
            memory = re.search(r"(\d+)\s*GB", offer.gpu_description or "")
            gpus.append({
                "id": offer.name,
                "displayName": re.sub(r"\s*\(.*\)$", "", offer.gpu_description or "")
                or _display_name(offer.name),
                "manufacturer": "AMD" if offer.name.startswith("AMD") else "Nvidia",
                "memoryInGb": int(memory.group(1)) if memory else 0,
                "cudaCores": None,
                "secureCloud": True,
                "communityCloud": True,
                "securePrice": price,
                "communityPrice": round(price * 0.8, 4),
                "secureSpotPrice": spot,
                "communitySpotPrice": round(spot * 0.8, 4),
                "oneWeekPrice": round(price * 0.95, 4),
                "oneMonthPrice": round(price * 0.9, 4),
                "threeMonthPrice": round(price * 0.85, 4),
                "sixMonthPrice": round(price * 0.8, 4),
                "maxGpuCount": max(offer.gpus or 1, 8),
                "maxGpuCountSecureCloud": max(offer.gpus or 1, 8),
                "maxGpuCountCommunityCloud": 4,
                "minPodGpuCount": 1,
                "_regions": list(offer.regions),
            })
        return gpus

    @staticmethod
    def _lowest_price(gpu: Mapping[str, Any], _info: Any,
                      input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Per-GPU prices for ``gpuCount`` GPUs; null prices when none can be had (sold
        out, or more GPUs than one machine holds), as RunPod answers then."""
        count = int((input or {}).get("gpuCount") or 1)
        center = (input or {}).get("dataCenterId")
        regions: list[str] = gpu["_regions"]
        available = bool(regions) and count <= gpu["maxGpuCount"] and (
            center is None or center in regions)
        return {
            "gpuName": gpu["displayName"],
            "gpuTypeId": gpu["id"],
            "minimumBidPrice": gpu["secureSpotPrice"] if available else None,
            "uninterruptablePrice": gpu["securePrice"] if available else None,
            "minMemory": 62 if available else None,
            "minVcpu": 8.0 if available else None,
            "stockStatus": "High" if available else None,
            "totalCount": 16 * len(regions),
            "rentedCount": 0,
            "rentalPercentage": 0.0,
        }

    def _deploy(self, _src: Any, _info: Any,
                input: Mapping[str, Any] | None = None) -> dict[str, Any]:
        spec = dict(input or {})
        problem = _check_deploy(spec)
        if problem is not None:
            raise _gql_error(problem, "BAD_USER_INPUT")
        ports = [p for p in str(spec.get("ports") or "").split(",") if p]
        if spec.get("startSsh", True) and "22/tcp" not in ports:
            ports.append("22/tcp")
        env = {str(e["key"]): str(e["value"]) for e in spec.get("env") or ()}
        cloud_type = spec.get("cloudType") or "ALL"
        now = self.cloud.clock.now()
        meta: dict[str, Any] = {
            "image": spec.get("imageName") or "runpod/base:latest",
            "env": env,
            "ports": ports,
            "gpu_count": spec.get("gpuCount") or 1,
            "cloud_type": "COMMUNITY" if cloud_type == "COMMUNITY" else "SECURE",
            "interruptible": False,  # podFindAndDeployOnDemand: on demand, never spot
            "container_disk": spec.get("containerDiskInGb") or 50,
            "volume": spec.get("volumeInGb") or 0,
            "volume_mount_path": spec.get("volumeMountPath") or "/workspace",
            "docker_args": spec.get("dockerArgs") or "",
            "template_id": spec.get("templateId") or "",
            "support_public_ip": spec.get("supportPublicIp", True) is not False,
            "started": now,
            "event": f"Rented by User: {_stamp(now)}",
        }
        name = str(spec.get("name") or "my pod")
        try:
            pid = self.cloud.create_instance(
                instance_type=str(spec["gpuTypeId"]), region=spec.get("dataCenterId"),
                name=name, tag=tag_from_name(name), meta=meta)
        except InvalidRequest as exc:
            if str(exc).endswith(f"unknown instance type {spec['gpuTypeId']}"):
                # RunPod finds no machine for a GPU id it does not sell: the capacity text
                raise _gql_error(GRAPHQL_MESSAGES["capacity"]) from None
            raise
        inst = self.cloud.instance(pid)
        inst.meta["machine_id"] = f"m{pid.replace('-', '')[-10:]}"
        return self._view(inst)

    def _stop(self, _src: Any, _info: Any,
              input: Mapping[str, Any]) -> dict[str, Any]:
        pid = self._known(input)
        self.cloud.stop(pid)
        inst = self.dialect.commanded(pid, "Exited by User", started=False)
        return {**self._view(inst), "desiredStatus": _asked(inst, "EXITED")}

    def _resume(self, _src: Any, _info: Any,
                input: Mapping[str, Any]) -> dict[str, Any]:
        pid = self._known(input)
        count = input.get("gpuCount")
        if count is not None and count < 1:
            raise _gql_error("gpuCount must be at least 1", "BAD_USER_INPUT")
        try:
            self.cloud.start(pid)
        except InsufficientCapacity:
            raise _gql_error(GRAPHQL_MESSAGES["capacity_resume"]) from None
        inst = self.dialect.commanded(pid, "Resumed by User", started=True)
        if count is not None:
            inst.meta["gpu_count"] = count  # a resume may ask for another GPU count
        return {**self._view(inst), "desiredStatus": _asked(inst, "RUNNING")}

    def _terminate(self, _src: Any, _info: Any,
                   input: Mapping[str, Any]) -> None:
        pid = self._known(input)
        self.cloud.terminate(pid)
        inst = self.cloud.instance(pid)
        inst.meta["event"] = f"Terminated by User: {_stamp(self.cloud.clock.now())}"

    # ---- helpers -----------------------------------------------------------------------

    def _known(self, input: Mapping[str, Any]) -> str:
        pid = str(input["podId"])
        try:
            if not self.cloud.instance(pid).removed:
                return pid
        except KeyError:
            pass
        raise ProviderNotFound(f"no pod {pid}", provider="runpod")

    def _view(self, inst: SimInstance) -> dict[str, Any]:
        """The pod in GraphQL's words, built from the v1 view so both APIs agree."""
        v1 = self.dialect._pod(inst, include_machine=True)
        meta = inst.meta
        attached = bool(v1["publicIp"])
        now = self.cloud.clock.now()
        started: datetime = meta.get("started", now)
        uptime = max(0, int((now - started).total_seconds())) if attached else 0
        gpu_count = v1["gpu"]["count"]
        runtime = None
        if attached:
            ports = []
            for i, spec in enumerate(v1["ports"]):
                match = _PORT.match(spec)
                if match is None:
                    continue
                private, kind = int(match.group(1)), match.group(2)
                if kind == "tcp":
                    ports.append({"ip": v1["publicIp"], "isIpPublic": True,
                                  "privatePort": private,
                                  "publicPort": v1["portMappings"][str(private)],
                                  "type": "tcp"})
                else:
                    ports.append({"ip": f"100.65.{inst.ip.rsplit('.', 2)[-2]}."
                                        f"{inst.ip.rsplit('.', 1)[-1]}",
                                  "isIpPublic": False, "privatePort": private,
                                  "publicPort": _PROXY_PORT_BASE + i, "type": "http"})
            runtime = {
                "uptimeInSeconds": uptime,
                "ports": ports,
                "gpus": [{"id": f"GPU-{inst.id}-{n}", "gpuUtilPercent": 0.0,
                          "memoryUtilPercent": 0.0} for n in range(gpu_count)],
                "container": {"cpuPercent": 0.0, "memoryPercent": 0.0},
            }
        machine = v1["machine"]
        return {
            "id": v1["id"],
            "name": v1["name"],
            "desiredStatus": v1["desiredStatus"],
            "lastStatusChange": v1["lastStatusChange"],
            "lastStartedAt": v1["lastStartedAt"],
            "createdAt": v1["lastStartedAt"],
            "imageName": v1["image"],
            "env": [f"{k}={v}" for k, v in v1["env"].items()],
            "dockerArgs": meta.get("docker_args", ""),
            "dockerId": f"{inst.id}-{v1['machineId']}" if attached else None,
            "templateId": meta.get("template_id", ""),
            "ports": ",".join(v1["ports"]),
            "port": None,
            "gpuCount": gpu_count,
            "vcpuCount": float(v1["vcpuCount"]),
            "memoryInGb": float(v1["memoryInGb"]),
            "containerDiskInGb": v1["containerDiskInGb"],
            "volumeInGb": float(v1["volumeInGb"]),
            "volumeMountPath": v1["volumeMountPath"],
            "costPerHr": v1["costPerHr"],
            "adjustedCostPerHr": v1["adjustedCostPerHr"],
            "podType": "INTERRUPTABLE" if v1["interruptible"] else "RESERVED",
            "machineId": v1["machineId"],
            "consumerUserId": v1["consumerUserId"],
            "locked": v1["locked"],
            "uptimeSeconds": uptime,
            "runtime": runtime,
            "machine": {
                "id": v1["machineId"],
                "podHostId": f"{inst.id}-{str(v1['machineId'])[-8:]}",
                "gpuDisplayName": _display_name(inst.instance_type),
                "gpuTypeId": machine["gpuTypeId"],
                "dataCenterId": machine["dataCenterId"],
                "location": machine["location"],
                "secureCloud": machine["secureCloud"],
                "supportPublicIp": bool(meta.get("support_public_ip", True)),
                "costPerHr": machine["costPerHr"],
                "currentPricePerGpu": machine["currentPricePerGpu"],
            },
        }


def _asked(inst: SimInstance, desired: str) -> str:
    """The ``desiredStatus`` a command's own answer shows: the status asked for, as
    RunPod's does, though the simulated pod takes up to a second to begin moving (reads
    show its phase meanwhile, as the v1 routes do). A ``set_raw_status`` word wins."""
    return inst.raw_override or desired


def _check_deploy(spec: Mapping[str, Any]) -> str | None:
    """What RunPod would refuse in a podFindAndDeployOnDemand input the schema let by."""
    if not spec.get("imageName") and not spec.get("templateId"):
        return "imageName or templateId is required"
    if not spec.get("gpuTypeId"):
        return "gpuTypeId is required to deploy a GPU pod"
    if spec.get("computeType") == "CPU":
        return "CPU pods are not offered by this emulator"
    count = spec.get("gpuCount")
    if count is not None and count < 1:
        return "gpuCount must be at least 1"
    for port in str(spec.get("ports") or "").split(","):
        if port and not _PORT.match(port):
            return f"port {port!r} is not [port number]/[http|tcp]"
    for key in ("containerDiskInGb", "volumeInGb"):
        value = spec.get(key)
        if value is not None and value < 0:
            return f"{key} must not be negative"
    name = spec.get("name")
    if name is not None and len(str(name)) > 191:
        return "name is longer than 191 characters"
    return None


def _guarded(resolve: Callable[..., Any]) -> Callable[..., Any]:
    """``resolve``, with the simulated cloud's errors turned into RunPod's GraphQL ones."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return resolve(*args, **kwargs)
        except ProviderError as exc:
            raise _provider_error(exc, args[1].field_name) from None

    return run


def _provider_error(exc: ProviderError, field: str) -> Exception:
    if isinstance(exc, InsufficientCapacity):
        key = "capacity_resume" if field == "podResume" else "capacity"
        return _gql_error(GRAPHQL_MESSAGES[key])
    if isinstance(exc, InsufficientCredit):
        return _gql_error(GRAPHQL_MESSAGES["credit"])
    if isinstance(exc, QuotaExceeded):
        return _gql_error(GRAPHQL_MESSAGES["quota"])
    if isinstance(exc, ProviderNotFound):
        return _gql_error(GRAPHQL_MESSAGES["not_found"])
    if isinstance(exc, InvalidRequest):
        text = str(exc)
        prefix = f"{exc.provider}: "
        return _gql_error(text[len(prefix):] if text.startswith(prefix) else text,
                          "BAD_USER_INPUT")
    if isinstance(exc, RateLimited):
        # throttling happens before GraphQL runs: an HTTP 429, as the v1 routes answer
        response = _errors(429, [GraphQLError(GRAPHQL_MESSAGES["rate_limit"])],
                           "TOO_MANY_REQUESTS")
        response.headers["Retry-After"] = "1"
        return _Refused(response)
    return _gql_error(GRAPHQL_MESSAGES["internal"])  # unavailable, timeout and the rest


def _located(errors: list[GraphQLError]) -> bool:
    return any(e.path for e in errors)


def _formatted(error: GraphQLError) -> dict[str, Any]:
    body = dict(error.formatted)
    body.setdefault("extensions", {"code": _INTERNAL})
    return body


def _errors(status: int, errors: list[GraphQLError], code: str) -> EmulatorResponse:
    formatted = []
    for error in errors:
        body = dict(error.formatted)
        body["extensions"] = {**(error.extensions or {}), "code": code}
        formatted.append(body)
    return EmulatorResponse(status, {"errors": formatted})


def _bad_request(message: str, code: str) -> EmulatorResponse:
    return EmulatorResponse(400, {"errors": [{"message": message,
                                              "extensions": {"code": code}}]})


def graphql_error_body(message: str, code: str) -> dict[str, Any]:
    """An error list in RunPod's GraphQL envelope (for the emulator's error faults)."""
    return {"errors": [{"message": message, "extensions": {"code": code}}]}

