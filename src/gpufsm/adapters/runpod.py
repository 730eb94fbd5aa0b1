"""RunPod pods through REST v1 (``https://rest.runpod.io/v1``), offers from the v2 catalog.

The lifecycle (create, list, get, stop, start, restart, delete) uses REST v1, the API
RunPod documents for pods. v1 has no GPU catalog, so ``instance_types`` reads the v2
catalog (``GET /v2/catalog/gpus`` on ``https://api.runpod.io``, same bearer key); when
``base_url`` is not the production v1 host (an emulator, a proxy) the v2 path is asked of
that same host instead.

**Status.** v1's ``desiredStatus`` (RUNNING | EXITED | TERMINATED) is what RunPod *intends*,
not what it observed: a freshly rented pod says RUNNING while its image is still being
pulled. Readiness comes from ``publicIp`` and ``portMappings``, which stay empty until the
container is up. So the raw status reported here is a composite, always starting with
the word the API sent, with a suffix only where another field changes its meaning:

======================== ============ ==============================================
raw status               state        when
======================== ============ ==============================================
``RUNNING``              RUNNING      desiredStatus RUNNING, publicIp and portMappings set
``RUNNING:initializing`` STARTING     desiredStatus RUNNING, either of them still empty
``EXITED``               STOPPED      desiredStatus EXITED (stopped by the user)
``EXITED:interrupted``   FAILED       EXITED and lastStatusChange tells of an interruption
``EXITED:error``         FAILED       EXITED and lastStatusChange says RunPod or an error
                                      stopped it
``TERMINATED``           TERMINATED   desiredStatus TERMINATED, nothing left attached
``TERMINATED:releasing`` TERMINATING  TERMINATED but publicIp/portMappings still set
``PROVISIONING`` …       (v2 words)   the v2 PodStatus vocabulary, verbatim
======================== ============ ==============================================

An interrupted (spot) or platform-stopped pod is FAILED rather than STOPPED: nobody asked
for the stop, its volume still bills, and STOPPED would hide it as if the user had
stopped it. Those two suffixes come from ``lastStatusChange``, which is free text, so the
markers matched are listed in ``_INTERRUPTED_MARKERS`` and ``_PROVIDER_EXIT_MARKERS``.
A TERMINATED pod that still shows its address is TERMINATING, so a wrong guess costs one
more look, never an unwatched machine.

**Errors.** v1 documents only ``401 UnauthorizedError {message}``; its other errors are
bare statuses, in practice ``{"error": "...", "status": N}``. v2 answers RFC 7807
``application/problem+json`` ``{title, status, detail, errors?}``. RunPod documents no
capacity or credit errors: those are recognised from the message text (see
``RUNPOD_ERRORS``), as third-party clients of the API do.

**Ownership.** RunPod has no tags: the pod ``name`` is ``request.display_name``
(``<tag>/<user name>``, at most 191 characters) and the tag is read back from it.

**Launch.** ``22/tcp`` is always exposed and a COMMUNITY pod asks for a public IP
(``supportPublicIp``, unless the options say otherwise): readiness is read from the
address and the port map, so a pod without them would look STARTING for ever.
``spec.command`` becomes ``dockerStartCmd ["sh", "-c", command]``; provider-only fields
come from ``spec.options`` under their PodCreateInput names (``cloudType``,
``interruptible``, ``volumeInGb`` …). The GPU type and data center enums in the spec are
snapshots that grow, so names are left for RunPod to judge.

**Not found.** v1 documents 404 "Pod not found." with no schema; RunPod is seen to send it
as ``{"error": "Pod not found.", "status": 404}``, and v2 as problem+json with title
``Not Found``. Only those two envelopes confirm absence (``get`` → None, ``terminate`` →
done). A 404 in any other shape (an HTML page, an empty body: a proxy or a wrong
``base_url``) is the seam's unknown outcome, never "gone".

**Terminate.** v1 documents 204 for DELETE and 400 "Invalid Pod ID.". RunPod's not-found
is taken as done; a 400 is taken as done only when a GET then answers not-found.

**Rate limits.** RunPod documents none for v1; 5 requests/s with a burst of 5 is our
guess (``RUNPOD_RATE_LIMITS``). 429 answers carry ``Retry-After``, which the seam honours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, RootModel, SecretStr, field_validator

from gpufsm.adapters._base import AdapterProfile, HttpAdapter, scrub
from gpufsm.adapters._http import RateLimit, parse_retry_after
from gpufsm.adapters._protocol import (
    InstanceTypeOffer,
    LaunchRequest,
    ProviderInstance,
    tag_from_name,
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

__all__ = [
    "RUNPOD_ERRORS",
    "RUNPOD_RATE_LIMITS",
    "RUNPOD_STATUSES",
    "RunPodAdapter",
    "map_runpod_error",
    "runpod_raw_status",
]

log = logging.getLogger("gpufsm.adapters.runpod")

PROVIDER = "runpod"
DEFAULT_BASE_URL = "https://rest.runpod.io"
V2_BASE_URL = "https://api.runpod.io"
_V1 = "/v1"

#: Every raw status this adapter can report, v1 composites and the v2 PodStatus words.
RUNPOD_STATUSES: Mapping[str, InstanceState] = {
    # v1 desiredStatus, refined by publicIp/portMappings and lastStatusChange
    "RUNNING": InstanceState.RUNNING,
    "RUNNING:initializing": InstanceState.STARTING,
    "EXITED": InstanceState.STOPPED,
    "EXITED:interrupted": InstanceState.FAILED,
    "EXITED:error": InstanceState.FAILED,
    "TERMINATED": InstanceState.TERMINATED,
    "TERMINATED:releasing": InstanceState.TERMINATING,
    # v2 PodStatus (RUNNING, EXITED and TERMINATED are shared with v1 above)
    "PROVISIONING": InstanceState.CREATED,  # "pod is being allocated": accepted, not booting
    "STARTING": InstanceState.STARTING,  # "container is starting"
    "ERROR": InstanceState.FAILED,  # "unrecoverable error state"; it still holds resources
}

#: Provider error reasons → gpufsm errors. Keys: ``message:<lower-case substring>`` of the
#: error text (checked first; from message text, RunPod documents no codes), then
#: ``title:<v2 problem title>``, then ``v1:<status>`` for v1's own JSON error body, then
#: ``status:<HTTP status>``.
RUNPOD_ERRORS: Mapping[str, type[ProviderError]] = {
    # capacity, from message text (create; start of a pod whose host is full)
    "message:no longer any instances available": InsufficientCapacity,
    "message:no instances currently available": InsufficientCapacity,
    "message:not enough free gpus": InsufficientCapacity,
    # credit, from message text
    "message:insufficient balance": InsufficientCredit,
    "message:insufficient funds": InsufficientCredit,
    "message:insufficient credit": InsufficientCredit,
    "message:not enough credit": InsufficientCredit,
    "message:not enough funds": InsufficientCredit,
    "message:balance is too low": InsufficientCredit,
    # account limit, from message text (RunPod caps new accounts' spend per hour)
    "message:spend limit": QuotaExceeded,
    # v2 problem+json titles
    "title:Bad Request": InvalidRequest,
    "title:Unauthorized": AuthError,
    "title:Forbidden": AuthError,
    "title:Not Found": ProviderNotFound,
    "title:Method Not Allowed": InvalidRequest,
    "title:Conflict": InvalidRequest,  # action not valid for the pod's current status
    "title:Unprocessable Entity": InvalidRequest,
    "title:Too Many Requests": RateLimited,
    # v1's not-found: a JSON ``{"error": ..., "status": 404}`` body (see ``_v1_not_found``);
    # a 404 in any other shape has no entry here on purpose.
    "v1:404": ProviderNotFound,  # "Pod not found."
    # HTTP statuses (v1 documents 400, 401, 404; v2 adds 403, 405, 409, 422, 429)
    "status:400": InvalidRequest,  # "Invalid input." / "Invalid Pod ID."
    "status:401": AuthError,  # UnauthorizedError {message}
    "status:403": AuthError,
    "status:405": InvalidRequest,
    "status:409": InvalidRequest,
    "status:422": InvalidRequest,
    "status:429": RateLimited,
    "status:500": ProviderUnavailable,
    "status:502": ProviderUnavailable,
    "status:503": ProviderUnavailable,
    "status:504": ProviderUnavailable,
}

#: Undocumented for v1; a guess that stays well clear of trouble.
RUNPOD_RATE_LIMITS: Mapping[str, RateLimit] = {"default": RateLimit(5.0, burst=5)}

# lastStatusChange is free text ("Rented by User: Fri Jul 12 2024 …"); these lower-case
# markers turn an EXITED pod that nobody asked to stop into FAILED.
_INTERRUPTED_MARKERS = ("interrupt", "preempt", "outbid")
_PROVIDER_EXIT_MARKERS = ("exited by runpod", "stopped by runpod", "error", "crash", "failed")

_NAME_MAX = 191  # PodCreateInput.name maxLength
_TAG_ROOM = 64  # what we keep free in the name for "<tag>/"
_CLOUD_TYPES = ("SECURE", "COMMUNITY")
_PRIORITIES = ("availability", "custom")
_SSH_PORT = 22

#: spec.options keys passed through to PodCreateInput, with the JSON types they take.
_OPTIONS: Mapping[str, tuple[type, ...]] = {
    "allowedCudaVersions": (list,),
    "cloudType": (str,),
    "containerRegistryAuthId": (str,),
    "countryCodes": (list,),
    "dataCenterIds": (list,),
    "dataCenterPriority": (str,),
    "dockerEntrypoint": (list,),
    "dockerStartCmd": (list,),
    "globalNetworking": (bool,),
    "gpuTypePriority": (str,),
    "interruptible": (bool,),
    "locked": (bool,),
    "minDiskBandwidthMBps": (int, float),
    "minDownloadMbps": (int, float),
    "minRAMPerGPU": (int,),
    "minUploadMbps": (int, float),
    "minVCPUPerGPU": (int,),
    "networkVolumeId": (str,),
    "supportPublicIp": (bool,),
    "templateId": (str,),
    "volumeInGb": (int,),
    "volumeMountPath": (str,),
}
_LIST_OF_STR_OPTIONS = ("allowedCudaVersions", "countryCodes", "dataCenterIds",
                        "dockerEntrypoint", "dockerStartCmd")


# ---- payload models ---------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _PodGpu(_Model):
    id: str | None = None
    count: int | None = None
    display_name: str | None = Field(default=None, alias="displayName")


class _PodMachine(_Model):
    data_center_id: str | None = Field(default=None, alias="dataCenterId")
    gpu_type_id: str | None = Field(default=None, alias="gpuTypeId")
    location: str | None = None


class _Pod(_Model):
    """The v1 Pod, lenient: every field but ``id`` may be missing or null."""

    id: str
    name: str | None = None
    desired_status: str | None = Field(default=None, alias="desiredStatus")
    last_status_change: str | None = Field(default=None, alias="lastStatusChange")
    public_ip: str | None = Field(default=None, alias="publicIp")
    port_mappings: dict[str, int] | None = Field(default=None, alias="portMappings")
    cost_per_hr: float | None = Field(default=None, alias="costPerHr")
    interruptible: bool | None = None
    machine_id: str | None = Field(default=None, alias="machineId")
    gpu: _PodGpu | None = None
    machine: _PodMachine | None = None

    @field_validator("port_mappings", mode="before")
    @classmethod
    def _mappings(cls, value: object) -> object:
        # An empty mapping has been seen as [], "" or null; only a dict carries ports.
        if not isinstance(value, dict):
            return None
        out: dict[str, int] = {}
        for key, port in value.items():
            try:
                out[str(key)] = int(port)
            except (TypeError, ValueError):
                continue
        return out

    @field_validator("cost_per_hr", mode="before")
    @classmethod
    def _cost(cls, value: object) -> object:
        if isinstance(value, str):  # the spec's own example is the string "0.74"
            try:
                return float(value)
            except ValueError:
                return None
        return value

    @property
    def runtime_attached(self) -> bool:
        """Address and port map both set: the container is up (or not yet released)."""
        return bool(self.public_ip) and bool(self.port_mappings)


class _PodList(RootModel[list[_Pod]]):
    """The v1 listing: an array of pods, all readable, or the listing is unusable."""


class _CatalogPrice(_Model):
    secure: float | None = None
    community: float | None = None


class _CatalogDataCenter(_Model):
    id: str
    availability: str | None = None


class _CatalogGpu(_Model):
    id: str
    name: str | None = None
    memory: int | None = None
    secure: bool | None = None
    community: bool | None = None
    price: _CatalogPrice = Field(default_factory=_CatalogPrice)
    max_count: dict[str, int] | None = Field(default=None, alias="maxCount")
    availability: str | None = None
    data_centers: list[_CatalogDataCenter] = Field(default_factory=list, alias="dataCenters")


class _Catalog(_Model):
    gpus: list[_CatalogGpu]


# ---- status and error mapping ------------------------------------------------------------


def runpod_raw_status(pod: Mapping[str, Any]) -> str:
    """The composite raw status of a v1 Pod body (see the module docstring)."""
    return _raw_status(_Pod.model_validate(pod))


def _raw_status(pod: _Pod) -> str:
    desired = pod.desired_status or ""
    if desired == "RUNNING":
        return "RUNNING" if pod.runtime_attached else "RUNNING:initializing"
    if desired == "EXITED":
        text = (pod.last_status_change or "").lower()
        if any(marker in text for marker in _INTERRUPTED_MARKERS):
            return "EXITED:interrupted"
        if any(marker in text for marker in _PROVIDER_EXIT_MARKERS):
            return "EXITED:error"
        return "EXITED"
    if desired == "TERMINATED":
        return "TERMINATED:releasing" if (pod.public_ip or pod.port_mappings) else "TERMINATED"
    return desired  # a v2 word, or one we have never seen: reported verbatim


def _json_body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _v1_envelope(response: httpx.Response) -> bool:
    """RunPod v1's own error body: ``{"error": "<text>", "status": <the HTTP status>}``."""
    data = _json_body(response)
    return (isinstance(data, dict) and isinstance(data.get("error"), str)
            and data.get("status") == response.status_code)


def _error_text(response: httpx.Response) -> tuple[str | None, str]:
    """(v2 problem title, the provider's message) from either error shape, or plain text."""
    data = _json_body(response)
    if isinstance(data, dict):
        title = data.get("title") if isinstance(data.get("title"), str) else None
        message = next((data[k] for k in ("detail", "error", "message")
                        if isinstance(data.get(k), str) and data[k]), "")
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            message = f"{message} ({'; '.join(str(e) for e in errors[:3])})"
        return title, message
    return None, response.text.strip()[:300]


def map_runpod_error(response: httpx.Response, provider: str = PROVIDER,
                     *, secret: SecretStr | str | None = None) -> ProviderError | None:
    """Map a RunPod error response with ``RUNPOD_ERRORS``; None lets the seam use the status.

    ``secret`` (the API key) is blanked out of any text we keep, in case a provider
    message ever echoes it.
    """
    status = response.status_code
    title, message = _error_text(response)
    cls: type[ProviderError] | None = None
    matched: str | None = None
    if status not in (401, 403, 429):  # these mean what they say whatever the text
        lowered = message.lower()
        for key, candidate in RUNPOD_ERRORS.items():
            if key.startswith("message:") and key[len("message:"):] in lowered:
                cls, matched = candidate, key
                break
    v1 = f"v1:{status}" if _v1_envelope(response) else ""
    for fallback in (f"title:{title}" if title else "", v1, f"status:{status}"):
        if cls is None and fallback and fallback in RUNPOD_ERRORS:
            cls, matched = RUNPOD_ERRORS[fallback], fallback
    if cls is None:
        return None
    text = f"HTTP {status}" + (f" {title}" if title else "") + (f": {message}" if message else "")
    text = scrub(text, secret)[:400]  # masked first: a cut must not leave part of a key
    kw: dict[str, Any] = {"provider": provider, "status_code": status, "code": title}
    log.debug("%s error mapped by %s to %s", provider, matched, cls.__name__)
    if cls is RateLimited:
        return RateLimited(text, retry_after=parse_retry_after(response.headers.get("retry-after")),
                           **kw)
    return cls(text, **kw)


# ---- the adapter -------------------------------------------------------------------------


class RunPodAdapter(HttpAdapter):
    """One RunPod account. See the module docstring for what each answer means."""

    profile = AdapterProfile(
        name=PROVIDER, base_url=DEFAULT_BASE_URL, api_key_env="RUNPOD_API_KEY",
        base_url_setting="runpod_base_url",
        capabilities=Capabilities(stop=True, restart=True, tags=False),
        error_mapper=map_runpod_error, rate_limits=RUNPOD_RATE_LIMITS)

    @property
    def _v2_root(self) -> str:
        # v2 lives on another host in production; anywhere else one host serves both.
        return V2_BASE_URL if self._base_url == DEFAULT_BASE_URL else self._base_url

    # ---- validation and the create body ---------------------------------------------------

    def validate(self, spec: InstanceSpec) -> None:
        """Every spec field is sent in PodCreateInput terms (instance_type as gpuTypeIds,
        region as dataCenterIds, image, name, disk_gb, gpu_count, command, env, ports,
        options) or refused here (ssh_key_names, max_price_per_hour): none is dropped."""
        options = dict(spec.options)
        for key, value in options.items():
            self._validate_option(key, value)
        if not spec.image and "templateId" not in options:
            raise ValidationError("image", "required: RunPod runs a container image "
                                  "(or give options.templateId)")
        if spec.name is not None and len(spec.name) > _NAME_MAX - _TAG_ROOM:
            raise ValidationError(
                "name", f"at most {_NAME_MAX - _TAG_ROOM} characters: RunPod names hold "
                f"{_NAME_MAX} and the ownership tag needs the rest", value=spec.name)
        if spec.ssh_key_names:
            raise ValidationError(
                "ssh_key_names", "RunPod installs the account's SSH keys itself and takes "
                "no key names; put a public key in env PUBLIC_KEY instead")
        if spec.max_price_per_hour is not None:
            raise ValidationError(
                "max_price_per_hour", "RunPod's pod API takes no price cap; "
                "choose the GPU type (and options.cloudType) by price instead")
        if spec.command is not None and "dockerStartCmd" in options:
            raise ValidationError("command", "give either command or options.dockerStartCmd")
        if spec.region is not None and "dataCenterIds" in options:
            raise ValidationError("region", "give either region or options.dataCenterIds")
        for key in spec.env:
            if not key or "=" in key:
                raise ValidationError(f"env.{key}", "a variable name, without '='")

    @staticmethod
    def _validate_option(key: str, value: object) -> None:
        field = f"options.{key}"
        types = _OPTIONS.get(key)
        if types is None:
            raise ValidationError(field, f"not a RunPod pod option; known: {', '.join(_OPTIONS)}")
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ValidationError(field, f"must be {names}", value=value)
        if key in _LIST_OF_STR_OPTIONS and not all(
            isinstance(item, str) and item for item in value  # type: ignore[attr-defined]
        ):
            raise ValidationError(field, "must be a list of non-empty strings", value=value)
        if key == "cloudType" and value not in _CLOUD_TYPES:
            raise ValidationError(field, f"one of {', '.join(_CLOUD_TYPES)}", value=value)
        if key in ("gpuTypePriority", "dataCenterPriority") and value not in _PRIORITIES:
            raise ValidationError(field, f"one of {', '.join(_PRIORITIES)}", value=value)
        if key == "volumeInGb" and isinstance(value, int) and value < 0:
            raise ValidationError(field, "must be >= 0", value=value)

    def create_body(self, request: LaunchRequest) -> dict[str, Any]:
        """The PodCreateInput for ``request`` (validated first)."""
        spec = request.spec
        self.validate(spec)
        name = request.display_name
        if len(name) > _NAME_MAX:
            raise ValidationError("name", f"tag and name together exceed {_NAME_MAX} characters")
        # 22/tcp always: readiness is read from portMappings, and SSH is how users get in.
        ports = [f"{_SSH_PORT}/tcp"] + [f"{p}/tcp" for p in spec.ports if p != _SSH_PORT]
        body: dict[str, Any] = {
            "name": name,
            "computeType": "GPU",
            "gpuTypeIds": [spec.instance_type],
            "gpuCount": spec.gpu_count or 1,
            "ports": ports,
        }
        if spec.image:
            body["imageName"] = spec.image
        if spec.disk_gb is not None:
            body["containerDiskInGb"] = spec.disk_gb
        if spec.env:
            body["env"] = dict(spec.env)
        if spec.region is not None:
            body["dataCenterIds"] = [spec.region]
        if spec.command is not None:
            body["dockerStartCmd"] = ["sh", "-c", spec.command]
        body.update(spec.options)
        if body.get("cloudType") == "COMMUNITY":
            # Without a public IP the pod never shows an address and would read as
            # STARTING forever; ask for one unless the user decided otherwise.
            body.setdefault("supportPublicIp", True)
        return body

    # ---- lifecycle -----------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> str:
        body = self.create_body(request)
        response = self._seam.request("POST", f"{_V1}/pods", op="launch", idempotent=False,
                                      json=body)
        # Unreadable, the pod may well exist: "unknown", and the reconciler finds the tag.
        return self._parse(response, _Pod, "launch").id

    def get(self, provider_instance_id: str) -> ProviderInstance | None:
        try:
            response = self._seam.request(
                "GET", f"{_V1}/pods/{quote(provider_instance_id, safe='')}", op="get",
                idempotent=True, params={"includeMachine": "true"})
        except ProviderNotFound:  # RunPod's own not-found envelope, and only that
            return None
        return self._instance(self._parse(response, _Pod, "get"))

    def list_instances(self) -> Sequence[ProviderInstance]:
        # v1 documents no pagination: one call returns every pod of the account
        # (serverless workers excluded, as includeWorkers defaults to false).
        response = self._seam.request("GET", f"{_V1}/pods", op="list", idempotent=True,
                                      params={"includeMachine": "true"})
        pods = self._parse(response, _PodList, "list").root
        return [self._instance(pod) for pod in pods]

    def start(self, provider_instance_id: str) -> None:
        self._action(provider_instance_id, "start")

    def stop(self, provider_instance_id: str) -> None:
        self._action(provider_instance_id, "stop")

    def restart(self, provider_instance_id: str) -> None:
        # runpod/runpod-python#450: restart has answered 200 without restarting; the
        # engine's observations (STARTING, then RUNNING) are what confirm it.
        self._action(provider_instance_id, "restart")

    def terminate(self, provider_instance_id: str) -> None:
        path = f"{_V1}/pods/{quote(provider_instance_id, safe='')}"
        try:
            self._seam.request("DELETE", path, op="terminate", idempotent=True)
        except ProviderNotFound:
            return  # RunPod's own not-found: already gone, terminate is idempotent
        except InvalidRequest as exc:
            # v1 documents 400 "Invalid Pod ID." for DELETE, never 404. A 400 alone is
            # not proof of absence; a GET answering not-found is.
            if exc.status_code == 400 and self.get(provider_instance_id) is None:
                return
            raise

    def instance_types(self) -> Sequence[InstanceTypeOffer]:
        response = self._seam.request(
            "GET", f"{self._v2_root}/v2/catalog/gpus", op="instance_types", idempotent=True,
            params={"include": "AVAILABILITY", "product": "POD"})
        catalog = self._parse(response, _Catalog, "instance_types")
        return [offer for gpu in catalog.gpus if (offer := self._offer(gpu)) is not None]

    # ---- helpers -------------------------------------------------------------------------

    def _action(self, provider_instance_id: str, action: str) -> None:
        # 200 with no documented body: nothing to read back.
        self._seam.request("POST", f"{_V1}/pods/{quote(provider_instance_id, safe='')}/{action}",
                           op=action, idempotent=True)

    @staticmethod
    def _instance(pod: _Pod) -> ProviderInstance:
        raw = _raw_status(pod)
        state = RUNPOD_STATUSES.get(raw)
        if state is None:
            log.warning("runpod pod %s: unknown raw status %r (desiredStatus=%r); "
                        "state UNKNOWN", pod.id, raw, pod.desired_status)
        ssh_port = (pod.port_mappings or {}).get(str(_SSH_PORT)) if pod.runtime_attached else None
        instance_type = (pod.gpu.id if pod.gpu and pod.gpu.id else None) or (
            pod.machine.gpu_type_id if pod.machine else None)
        return ProviderInstance(
            provider_instance_id=pod.id,
            raw_status=raw,
            state=state,
            tag=tag_from_name(pod.name),
            name=pod.name,
            ip=pod.public_ip or None,
            region=pod.machine.data_center_id if pod.machine else None,
            instance_type=instance_type,
            price_per_hour=pod.cost_per_hr,
            ssh_port=ssh_port,
            detail=pod.last_status_change or None,
        )

    @staticmethod
    def _offer(gpu: _CatalogGpu) -> InstanceTypeOffer | None:
        """One offer per GPU type at one GPU; secure-cloud price unless only community."""
        if gpu.secure is not False and gpu.price.secure is not None:
            price = gpu.price.secure
        elif gpu.price.community is not None:
            price = gpu.price.community
        else:
            return None
        regions = tuple(dc.id for dc in gpu.data_centers
                        if (dc.availability or "NONE").upper() != "NONE")
        label = gpu.name or gpu.id
        memory = f" ({gpu.memory} GB)" if gpu.memory else ""
        return InstanceTypeOffer(
            provider=PROVIDER,
            name=gpu.id,
            price_per_hour=price,
            regions=regions,
            gpus=1,
            gpu_description=f"{label}{memory}",
            description=f"{label}, price per GPU; gpu_count multiplies it",
            extra={
                "community_price_per_hour": gpu.price.community,
                "max_count": dict(gpu.max_count or {}),
                "availability": gpu.availability,
            },
        )

