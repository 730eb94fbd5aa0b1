# ruff: noqa: N815
"""RunPod's dialect data: status and error tables, payloads and options, the composite status.

Tables are data the shared dialect interprets (``_dialect``). Payloads are lenient (every
field of a pod but ``id`` may be missing or null); ``RunPodOptions`` is strict, under
PodCreateInput's own (camelCase) names. ``raw_status`` is RunPod's composite status (see
``runpod``'s docstring for the table it follows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    field_validator,
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
)
from gpufsm.machines import InstanceState

__all__ = [
    "RUNPOD_ERRORS",
    "RUNPOD_STATUSES",
    "SPOT_PRICES_QUERY",
    "Catalog",
    "CatalogGpu",
    "Pod",
    "PodList",
    "RunPodOptions",
    "SpotPrices",
    "raw_status",
    "runpod_raw_status",
]

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

# lastStatusChange is free text ("Rented by User: Fri Jul 12 2024 …"); these lower-case
# markers turn an EXITED pod that nobody asked to stop into FAILED.
_INTERRUPTED_MARKERS = ("interrupt", "preempt", "outbid")
_PROVIDER_EXIT_MARKERS = ("exited by runpod", "stopped by runpod", "error", "crash", "failed")


# ---- payloads ----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PodGpu(_Model):
    id: str | None = None
    count: int | None = None
    display_name: str | None = Field(default=None, alias="displayName")


class PodMachine(_Model):
    data_center_id: str | None = Field(default=None, alias="dataCenterId")
    gpu_type_id: str | None = Field(default=None, alias="gpuTypeId")
    location: str | None = None


class Pod(_Model):
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
    gpu: PodGpu | None = None
    machine: PodMachine | None = None

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


class PodList(RootModel[list[Pod]]):
    """The v1 listing: an array of pods, all readable, or the listing is unusable."""


class _CatalogPrice(_Model):
    secure: float | None = None
    community: float | None = None


class CatalogDataCenter(_Model):
    id: str
    availability: str | None = None


class CatalogGpu(_Model):
    id: str
    name: str | None = None
    memory: int | None = None
    secure: bool | None = None
    community: bool | None = None
    price: _CatalogPrice = Field(default_factory=_CatalogPrice)
    max_count: dict[str, int] | None = Field(default=None, alias="maxCount")
    availability: str | None = None
    data_centers: list[CatalogDataCenter] = Field(default_factory=list, alias="dataCenters")


class Catalog(_Model):
    gpus: list[CatalogGpu]


#: The spot prices the v2 catalog lacks: GraphQL ``gpuTypes`` (graphql-spec.runpod.io),
#: per GPU and per cloud, as REST v1 also shows them on a pod's ``machine.gpuType``.
SPOT_PRICES_QUERY = "query SpotPrices { gpuTypes { id secureSpotPrice communitySpotPrice } }"


class SpotGpu(_Model):
    id: str
    secure: float | None = Field(default=None, alias="secureSpotPrice")
    community: float | None = Field(default=None, alias="communitySpotPrice")


class _SpotData(_Model):
    gpu_types: list[SpotGpu] | None = Field(default=None, alias="gpuTypes")


class SpotPrices(_Model):
    """The answer to :data:`SPOT_PRICES_QUERY`; ``errors`` set when GraphQL refused it."""

    data: _SpotData | None = None
    errors: list[Any] | None = None

    def by_gpu(self) -> dict[str, SpotGpu]:
        return {g.id: g for g in (self.data.gpu_types or []) if g.id} if self.data else {}


# ---- the composite status ----------------------------------------------------------------


def runpod_raw_status(pod: Mapping[str, Any]) -> str:
    """The composite raw status of a v1 Pod body (see the module docstring)."""
    return raw_status(Pod.model_validate(pod))


def raw_status(pod: Pod) -> str:
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


# ---- options -----------------------------------------------------------------------------

_Text = Annotated[str, Field(strict=True)]
_Texts = list[Annotated[str, Field(strict=True, min_length=1)]]
_Number = Annotated[float, Field(strict=True)]


class RunPodOptions(BaseModel):
    """``InstanceSpec.options`` passed through to PodCreateInput, with the JSON types
    each takes; anything else is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowedCudaVersions: _Texts | None = None
    cloudType: Literal["SECURE", "COMMUNITY"] | None = None
    containerRegistryAuthId: _Text | None = None
    countryCodes: _Texts | None = None
    dataCenterIds: _Texts | None = None
    dataCenterPriority: Literal["availability", "custom"] | None = None
    dockerEntrypoint: _Texts | None = None
    dockerStartCmd: _Texts | None = None
    globalNetworking: StrictBool | None = None
    gpuTypePriority: Literal["availability", "custom"] | None = None
    interruptible: StrictBool | None = None
    locked: StrictBool | None = None
    minDiskBandwidthMBps: _Number | None = None
    minDownloadMbps: _Number | None = None
    minRAMPerGPU: StrictInt | None = None
    minUploadMbps: _Number | None = None
    minVCPUPerGPU: StrictInt | None = None
    networkVolumeId: _Text | None = None
    supportPublicIp: StrictBool | None = None
    templateId: _Text | None = None
    volumeInGb: Annotated[int, Field(strict=True, ge=0)] | None = None
    volumeMountPath: _Text | None = None
