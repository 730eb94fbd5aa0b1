"""Novita GPU-instance payloads (``/gpu-instance/openapi/v1``) and options as pydantic
models, with the launch rules (``check_spec``).

Novita publishes no OpenAPI file, so these models *are* our written contract, built from
tests/fixtures/provider-api/novita/NOTES.md. Two kinds live here, on purpose:

* the **create request** is strict (``extra="forbid"``, the documented ranges): the
  adapter builds its body through it, the emulator refuses what it refuses, and the tests
  validate captured bodies against it;
* the **responses** are lenient (``extra="ignore"``, optional fields, counts that arrive
  as strings parsed leniently): one odd field in a listing must not hide an instance that
  still bills. Only the fields that identify an instance (``id``, ``status``) are required.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gpufsm.adapters._dialect import parse_options, refuse
from gpufsm.errors import ValidationError
from gpufsm.specs import InstanceSpec

__all__ = [
    "DEFAULT_ROOTFS_GB",
    "GPU_RANGE",
    "MAX_NAME",
    "BillingMode",
    "CreateInstanceRequest",
    "CreateInstanceResponse",
    "EnvVar",
    "ErrorBody",
    "InstanceNetwork",
    "InstancePayload",
    "InstanceStatusError",
    "ListInstancesResponse",
    "ListProductsResponse",
    "NetworkStorageMount",
    "NovitaOptions",
    "PortMapping",
    "ProductPayload",
    "Tool",
    "check_spec",
    "lenient_float",
    "lenient_int",
]

BillingMode = Literal["onDemand", "monthly", "spot"]


def lenient_int(value: Any) -> int | None:
    """``"2"``, ``2``, ``"2.0"`` → 2; empty, null or garbage → None (never an error)."""
    number = lenient_float(value)
    if number is None:
        return None
    return int(number) if number.is_integer() else None


def lenient_float(value: Any) -> float | None:
    """A number that may come as a string; None when it is not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _lenient_str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _string_list(value: Any) -> list[str]:
    """Product ``regions`` is documented as ``[string]`` but shown as ``{}``: take both."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list):
        return [str(v) for v in value if v not in (None, "")]
    return []


LenientInt = Annotated[int | None, BeforeValidator(lenient_int)]
LenientFloat = Annotated[float | None, BeforeValidator(lenient_float)]
LenientStr = Annotated[str | None, BeforeValidator(_lenient_str)]
StringList = Annotated[list[str], BeforeValidator(_string_list)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=True)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- requests -------------------------------------------------------------------------


class EnvVar(_Strict):
    key: str = Field(min_length=1)
    value: str


class Tool(_Strict):
    name: str = Field(min_length=1)
    port: int | str
    type: str


class NetworkStorageMount(_Strict):
    Id: str = Field(min_length=1)  # Novita spells it so
    mountPoint: str = Field(min_length=1)  # noqa: N815


class CreateInstanceRequest(_Strict):
    """POST /gpu/instance/create, with the documented required fields and ranges."""

    productId: str = Field(min_length=1)  # noqa: N815
    gpuNum: int = Field(ge=1, le=8)  # noqa: N815
    rootfsSize: int = Field(ge=10, le=6144)  # noqa: N815
    imageUrl: str = Field(min_length=1)  # noqa: N815
    kind: Literal["gpu", "cpu"]
    name: str | None = Field(default=None, max_length=255)
    imageAuth: str | None = None  # noqa: N815
    imageAuthId: str | None = None  # noqa: N815
    ports: str | None = None
    envs: list[EnvVar] | None = Field(default=None, max_length=100)
    tools: list[Tool] | None = None
    command: str | None = Field(default=None, max_length=2047)
    entrypoint: str | None = None
    clusterId: str | None = None  # noqa: N815
    networkStorages: list[NetworkStorageMount] | None = Field(  # noqa: N815
        default=None, max_length=30)
    networkId: str | None = None  # noqa: N815
    month: int | None = Field(default=None, ge=0)
    billingMode: BillingMode | None = None  # noqa: N815
    autoRenew: bool | None = None  # noqa: N815
    autoRenewMonth: int | None = Field(default=None, ge=0)  # noqa: N815
    minCudaVersion: str | None = None  # noqa: N815


class CreateInstanceResponse(_Lenient):
    id: str = Field(min_length=1)


# ---- instances ------------------------------------------------------------------------


class InstanceStatusError(_Lenient):
    """Failure detail: ``state`` is "abnormal instance status" when creation failed or the
    instance is unavailable; empty strings when all is well."""

    state: LenientStr = None
    message: LenientStr = None


class InstanceNetwork(_Lenient):
    id: LenientStr = None
    ip: LenientStr = None


class PortMapping(_Lenient):
    port: LenientInt = None
    endpoint: LenientStr = None
    type: LenientStr = None


class InstancePayload(_Lenient):
    """One instance, from GET /gpu/instance or an item of GET /gpu/instances."""

    id: str = Field(min_length=1)
    status: str
    name: LenientStr = None
    clusterId: LenientStr = None  # noqa: N815
    clusterName: LenientStr = None  # noqa: N815
    productId: LenientStr = None  # noqa: N815
    productName: LenientStr = None  # noqa: N815
    imageUrl: LenientStr = None  # noqa: N815
    command: LenientStr = None
    kind: LenientStr = None
    billingMode: LenientStr = None  # noqa: N815
    cpuNum: LenientInt = None  # noqa: N815
    memory: LenientInt = None
    gpuNum: LenientInt = None  # noqa: N815
    rootfsSize: LenientInt = None  # noqa: N815
    statusError: InstanceStatusError | None = None  # noqa: N815
    network: InstanceNetwork | None = None
    portMappings: list[PortMapping] | None = None  # noqa: N815
    spotStatus: LenientStr = None  # noqa: N815
    spotReclaimTime: LenientStr = None  # noqa: N815
    endTime: LenientStr = None  # noqa: N815


class ListInstancesResponse(_Lenient):
    instances: list[InstancePayload] | None = None
    total: LenientInt = None


# ---- products ---------------------------------------------------------------------------


class ProductPayload(_Lenient):
    """A GPU product. ``price`` and ``spotPrice`` are per GPU per hour in Novita's price
    unit (see ``PRICE_UNIT_USD`` in the adapter)."""

    id: str = Field(min_length=1)
    name: str
    cpuPerGpu: LenientInt = None  # noqa: N815
    memoryPerGpu: LenientInt = None  # noqa: N815
    diskPerGpu: LenientInt = None  # noqa: N815
    availableDeploy: bool = False  # noqa: N815
    minRootFS: LenientInt = None  # noqa: N815
    maxRootFS: LenientInt = None  # noqa: N815
    minLocalStorage: LenientInt = None  # noqa: N815
    maxLocalStorage: LenientInt = None  # noqa: N815
    regions: StringList = Field(default_factory=list)
    price: LenientFloat = None
    spotPrice: LenientFloat = None  # noqa: N815
    billingMethods: StringList = Field(default_factory=list)  # noqa: N815


class ListProductsResponse(_Lenient):
    data: list[ProductPayload] | None = None


# ---- errors -------------------------------------------------------------------------------


class ErrorBody(_Lenient):
    """``{"code": <http int>, "reason": "<NAME>", "message": "<text>"}`` (third-party
    observation; the docs give the reason names and HTTP codes only)."""

    code: LenientInt = None
    reason: LenientStr = None
    message: LenientStr = None


# ---- options and the create body ---------------------------------------------------------

#: Root disk when the spec gives none: Novita's free container-disk quota (pricing guide),
#: raised to the product's ``minRootFS`` when that is larger.
DEFAULT_ROOTFS_GB = 60
ROOTFS_RANGE = (10, 6144)
GPU_RANGE = (1, 8)
RESERVED_PORTS = frozenset({2222, 2223, 2224})
MAX_PORTS_AND_TOOLS = 15
MAX_ENVS = 100
MAX_COMMAND = 2047
MAX_NAME = 255
#: Room kept in the 255-character name for our ``gpufsm-<token>/`` prefix.
NAME_ROOM_FOR_TAG = 56


class NovitaOptions(BaseModel):
    """``InstanceSpec.options`` Novita understands; anything else is refused (typos cost
    money when they silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    productId: str | None = Field(default=None, min_length=1, max_length=255)  # noqa: N815
    billingMode: Literal["onDemand", "monthly", "spot"] | None = None  # noqa: N815
    clusterId: str | None = Field(default=None, max_length=255)  # noqa: N815
    kind: Literal["gpu", "cpu"] | None = None
    imageAuth: str | None = None  # noqa: N815
    imageAuthId: str | None = None  # noqa: N815
    tools: list[Tool] | None = None
    entrypoint: str | None = None
    networkStorages: list[NetworkStorageMount] | None = Field(  # noqa: N815
        default=None, max_length=30)
    networkId: str | None = None  # noqa: N815
    month: int | None = Field(default=None, ge=0)
    autoRenew: bool | None = None  # noqa: N815
    autoRenewMonth: int | None = Field(default=None, ge=0)  # noqa: N815
    minCudaVersion: str | None = None  # noqa: N815
    #: port → "tcp" | "http" for ``spec.ports``; tcp when not given (works for anything).
    port_types: dict[int, Literal["tcp", "http"]] = Field(default_factory=dict)


#: Novita takes no SSH key names: refused by name, not dropped.
_REFUSED: Mapping[str, str] = {
    "ssh_key_names": "Novita takes no SSH key names at create: put a public key in env "
                     "(e.g. PUBLIC_KEY) or use the password Novita shows",
}


def check_spec(spec: InstanceSpec) -> NovitaOptions:
    """Every spec field is sent (instance_type as the product, region as clusterId,
    image, name, disk_gb, gpu_count, command, env, ports, options), checked against
    Novita's products (max_price_per_hour, at launch) or refused here (ssh_key_names):
    none is silently dropped."""
    opts = parse_options(NovitaOptions, spec.options, provider="Novita")
    if not spec.image:
        raise ValidationError("image", "required: Novita needs an image (imageUrl)")
    refuse(spec, _REFUSED)
    if spec.region is not None and opts.clusterId is not None and (
        spec.region != opts.clusterId
    ):
        raise ValidationError("region", "give either region or options.clusterId "
                              "(both name the cluster)", value=spec.region)
    if spec.disk_gb is not None and not ROOTFS_RANGE[0] <= spec.disk_gb <= ROOTFS_RANGE[1]:
        raise ValidationError("disk_gb", "must be 10..6144 GB (Novita rootfsSize)",
                              value=spec.disk_gb)
    gpus = spec.gpu_count or 1
    if not GPU_RANGE[0] <= gpus <= GPU_RANGE[1]:
        raise ValidationError("gpu_count", "must be 1..8 (Novita gpuNum)", value=gpus)
    _check_ports(spec.ports, opts)
    if len(spec.env) > MAX_ENVS:
        raise ValidationError("env", f"at most {MAX_ENVS} variables", value=len(spec.env))
    for key in spec.env:
        if not key:
            raise ValidationError("env", "variable names must not be empty")
    if spec.command is not None and len(spec.command) > MAX_COMMAND:
        raise ValidationError("command", f"at most {MAX_COMMAND} characters",
                              value=len(spec.command))
    if spec.name is not None and len(spec.name) > MAX_NAME - NAME_ROOM_FOR_TAG:
        raise ValidationError(
            "name", f"at most {MAX_NAME - NAME_ROOM_FOR_TAG} characters: Novita keeps "
            f"{MAX_NAME} and the ownership tag needs the rest", value=len(spec.name))
    if opts.billingMode == "monthly" and not opts.month:
        raise ValidationError("options.month", "monthly billing needs month >= 1")
    return opts


def _check_ports(ports: Sequence[int], opts: NovitaOptions) -> None:
    for port in ports:
        if port in RESERVED_PORTS:
            raise ValidationError("ports", "2222-2224 are reserved by Novita", value=port)
    if len(set(ports)) != len(ports):
        raise ValidationError("ports", "each port once", value=ports)
    tools = len(opts.tools or ())
    if len(ports) + tools > MAX_PORTS_AND_TOOLS:
        raise ValidationError("ports", f"ports plus tools must be <= {MAX_PORTS_AND_TOOLS}",
                              value=len(ports) + tools)
    for port in opts.port_types:
        if port not in ports:
            raise ValidationError(f"options.port_types.{port}", "not one of spec.ports")
