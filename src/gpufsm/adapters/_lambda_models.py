"""Lambda Cloud's dialect data (spec 1.8.3): its tables, payloads and options.

The raw-status and error-code tables are data the shared dialect interprets
(``gpufsm.adapters._dialect``); the payloads and options are pydantic models.

Responses are lenient (``extra="ignore"``; only what identifies an instance is required),
so one odd field cannot hide an instance that still bills. ``LambdaOptions`` is strict:
every ``InstanceSpec.options`` key Lambda understands, with Lambda's own rules, and a
typo refused (it would otherwise be silently dropped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from gpufsm.adapters._dialect import parse_options, refuse
from gpufsm.adapters._protocol import TAG_PREFIX
from gpufsm.errors import (
    AuthError,
    InsufficientCapacity,
    InvalidRequest,
    ProviderError,
    ProviderNotFound,
    ProviderUnavailable,
    QuotaExceeded,
    ValidationError,
)
from gpufsm.machines import InstanceState
from gpufsm.specs import InstanceSpec

__all__ = [
    "LAMBDA_ERRORS",
    "LAMBDA_ERROR_PREFIXES",
    "LAMBDA_LAUNCH_OVERRIDES",
    "LAMBDA_NAME_MAX",
    "LAMBDA_REGIONS",
    "LAMBDA_STATUSES",
    "LAMBDA_TAG_KEY",
    "LAMBDA_TERMINATE_BATCH_MAX",
    "USER_DATA_MAX",
    "LambdaError",
    "LambdaErrorEnvelope",
    "LambdaInstance",
    "LambdaInstanceEnvelope",
    "LambdaInstanceListEnvelope",
    "LambdaInstanceType",
    "LambdaInstanceTypeRef",
    "LambdaInstanceTypesEnvelope",
    "LambdaInstanceTypesItem",
    "LambdaLaunchEnvelope",
    "LambdaOptions",
    "LambdaRegion",
    "LambdaRestartEnvelope",
    "LambdaTag",
    "LambdaTerminateEnvelope",
    "check_spec",
    "launch_name",
    "rulesets",
    "tag_value",
    "user_tags",
]

#: Our ownership tag lives under this key; the value is the tag without ``gpufsm-``.
LAMBDA_TAG_KEY = "gpufsm"

LAMBDA_NAME_MAX = 64  #: an instance name's length limit (launch and rename)

#: Ids per terminate request: the spec sets no limit; 100 keeps an answer (an ``Instance``
#: per id) near 100 kB, and a refused request at 100 ids to send one by one.
LAMBDA_TERMINATE_BATCH_MAX = 100

#: Every documented ``InstanceStatus`` (1.8.3) and what it means to gpufsm.
LAMBDA_STATUSES: Mapping[str, InstanceState] = MappingProxyType({
    "booting": InstanceState.STARTING,  # launched or restarting; no IP until active
    "active": InstanceState.RUNNING,
    # Broken but still allocated and billing: FAILED (billable) makes the reconciler
    # restart or terminate it, never forget it.
    "unhealthy": InstanceState.FAILED,
    "terminating": InstanceState.TERMINATING,
    "terminated": InstanceState.TERMINATED,  # Lambda itself confirms it is gone
    # Taken back by Lambda, yet still listed and (per spec silence) possibly billed until
    # we terminate it: FAILED + billable, so the reconciler issues a terminate. Not
    # TERMINATED, which must mean *confirmed gone*.
    "preempted": InstanceState.FAILED,
})

#: Every documented error ``code`` (1.8.3, plus 1.4.0's extra codes) → gpufsm error.
LAMBDA_ERRORS: Mapping[str, type[ProviderError]] = MappingProxyType({
    "global/invalid-api-key": AuthError,
    "global/account-inactive": AuthError,
    # A billing-address problem, 403 on launch only. Lambda bills afterwards (no balance
    # to run out of) and keeps the running instances alive, so this is the account
    # refusing new work, like account-inactive, not "the account cannot pay": mapping it
    # to InsufficientCredit would fire the destroy-everything emergency policy.
    "global/invalid-address": AuthError,
    "global/invalid-parameters": InvalidRequest,
    # On launch it names a missing ssh key / image / filesystem: see LAMBDA_LAUNCH_OVERRIDES.
    "global/object-does-not-exist": ProviderNotFound,
    "instance-operations/launch/insufficient-capacity": InsufficientCapacity,
    "instance-operations/launch/file-system-in-wrong-region": InvalidRequest,
    "global/quota-exceeded": QuotaExceeded,
    "global/duplicate": InvalidRequest,
    "filesystems/filesystem-in-use": InvalidRequest,
    "firewall-rulesets/firewall-ruleset-in-use": InvalidRequest,
    # "An internal server error occurred. Try again later." (sent as 409).
    "global/internal-error": ProviderUnavailable,
    # 1.4.0 only. An error Lambda could not classify: the outcome is unknown, so it is
    # temporary (a launch that answered this may have created a machine).
    "global/unknown": ProviderUnavailable,
    "instance-operations/launch/file-systems-not-supported": InvalidRequest,
    "ssh-keys/key-in-use": InvalidRequest,
})

#: Code prefixes: ``provider/*`` errors come from Lambda's upstream providers
#: (e.g. ``provider/internal-unavailable``, "Try again shortly").
LAMBDA_ERROR_PREFIXES: Mapping[str, type[ProviderError]] = MappingProxyType({
    "provider/": ProviderUnavailable,
})

# On launch, "object does not exist" is about something the request referenced (an ssh
# key, an image, a filesystem), not an instance: it must not read as "instance gone".
LAMBDA_LAUNCH_OVERRIDES: Mapping[str, type[ProviderError]] = MappingProxyType({
    "global/object-does-not-exist": InvalidRequest,
})

#: ``PublicRegionCode`` of spec 1.8.3: launch refuses any other region name.
LAMBDA_REGIONS: tuple[str, ...] = (
    "europe-central-1", "asia-south-1", "australia-east-1", "me-west-1",
    "asia-northeast-1", "asia-northeast-2", "us-east-1", "us-west-2", "us-west-1",
    "us-south-1", "us-west-3", "us-midwest-1", "us-east-2", "us-south-2", "us-south-3",
    "us-east-3", "us-midwest-2",
)

class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)


class LambdaRegion(_Model):
    name: str
    description: str | None = None


class LambdaInstanceTypeSpecs(_Model):
    vcpus: int | None = None
    memory_gib: int | None = None
    storage_gib: int | None = None
    gpus: int | None = None


class LambdaInstanceType(_Model):
    name: str
    description: str | None = None
    gpu_description: str | None = None
    price_cents_per_hour: float | None = None
    specs: LambdaInstanceTypeSpecs | None = None


class LambdaTag(_Model):
    key: str
    value: str = ""


class LambdaInstanceTypeRef(_Model):
    """An instance's ``instance_type``: what ``to_provider_instance`` reads of it."""

    name: str
    price_cents_per_hour: float | None = None


class LambdaInstance(_Model):
    """``Instance``: only id and status are needed to observe; the rest may be absent
    (``ip`` is missing while it boots).

    Only the fields gpufsm reads are declared: the others (``private_ip``,
    ``hostname``, ``ssh_key_names``, ``file_system_names``, ``actions``, the type's
    descriptions and specs) are skipped by the JSON parser without building a Python
    object each. A listing of 10k instances validates in ~2/3 of the time, and an odd
    value in a field nobody reads cannot make the whole listing unreadable.
    """

    id: str
    status: str
    name: str | None = None
    ip: str | None = None
    region: LambdaRegion | None = None
    instance_type: LambdaInstanceTypeRef | None = None
    tags: list[LambdaTag] | None = None


class LambdaInstanceTypesItem(_Model):
    instance_type: LambdaInstanceType
    regions_with_capacity_available: list[LambdaRegion] = Field(default_factory=list)


class LambdaLaunchResponse(_Model):
    instance_ids: list[str]


class LambdaRestartResponse(_Model):
    restarted_instances: list[LambdaInstance] = Field(default_factory=list)


class LambdaTerminateResponse(_Model):
    terminated_instances: list[LambdaInstance] = Field(default_factory=list)


class LambdaInstanceListEnvelope(_Model):
    data: list[LambdaInstance]


class LambdaInstanceEnvelope(_Model):
    data: LambdaInstance


class LambdaInstanceTypesEnvelope(_Model):
    data: dict[str, LambdaInstanceTypesItem]


class LambdaLaunchEnvelope(_Model):
    data: LambdaLaunchResponse


class LambdaRestartEnvelope(_Model):
    data: LambdaRestartResponse


class LambdaTerminateEnvelope(_Model):
    data: LambdaTerminateResponse


class LambdaError(_Model):
    code: str
    message: str = ""
    suggestion: str | None = None


class LambdaErrorEnvelope(_Model):
    error: LambdaError
    field_errors: dict[str, Any] | None = None  # 1.4.0 only


# ---- options ---------------------------------------------------------------------------

_TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9-:]+$")
_TAG_KEY_MAX = 55
_TAG_VALUE_MAX = 128
_MOUNT_RE = r"^(/home|/lambda/nfs|/data)[//a-zA-Z0-9-]*$"


def _tag_key(key: str) -> str:
    if len(key) > _TAG_KEY_MAX or not _TAG_KEY_RE.fullmatch(key):
        raise ValueError(f"keys match {_TAG_KEY_RE.pattern} and are at most {_TAG_KEY_MAX} "
                         "characters")
    if key == LAMBDA_TAG_KEY:
        raise ValueError("reserved for gpufsm's ownership tag")
    return key


def _tag_pairs(raw: object) -> object:
    """Tags as a mapping: ``{key: value}`` as it is, ``[{key, value}, ...]`` turned into one."""
    if isinstance(raw, Mapping):
        return raw
    if isinstance(raw, list | tuple) and all(
        isinstance(t, Mapping) and set(t) == {"key", "value"} for t in raw
    ):
        return {t["key"]: t["value"] for t in raw}
    raise ValueError("a mapping {key: value} or a list of {key, value}")


def _one_image(image: dict[str, str]) -> dict[str, str]:
    if len(image) != 1 or not all(image.values()):
        raise ValueError("exactly one of {'id': ...} or {'family': ...}")
    return image


_Text = Annotated[str, Field(strict=True, min_length=1)]
_TagKey = Annotated[str, Field(strict=True), AfterValidator(_tag_key)]
_TagValue = Annotated[str, Field(strict=True, max_length=_TAG_VALUE_MAX)]


class _Ruleset(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Annotated[str, Field(strict=True)]


class _Mount(BaseModel):
    model_config = ConfigDict(extra="ignore")
    file_system_id: Annotated[str, Field(strict=True)]
    mount_point: Annotated[str, StringConstraints(strict=True, max_length=256,
                                                  pattern=_MOUNT_RE)]


class LambdaOptions(BaseModel):
    """``InstanceSpec.options`` for Lambda: checked here, sent as given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hostname: Annotated[str, StringConstraints(
        strict=True, pattern=r"^[a-z0-9][0-9a-z-]{0,62}$")] | None = None
    tags: Annotated[dict[_TagKey, _TagValue], BeforeValidator(_tag_pairs)] | None = None
    image: Annotated[dict[Annotated[str, Field(pattern="^(id|family)$")], _Text],
                     AfterValidator(_one_image)] | None = None
    file_system_names: list[_Text] | None = None
    file_system_mounts: list[_Mount] | None = None
    firewall_rulesets: list[_Text | _Ruleset] | None = None


def user_tags(options: LambdaOptions) -> list[dict[str, str]]:
    """The user's own tags, as Lambda's ``[{key, value}]``."""
    return [{"key": k, "value": v} for k, v in (options.tags or {}).items()]


def rulesets(raw: Any) -> list[dict[str, str]]:
    """Firewall rulesets as Lambda's ``[{id}]``, from ids or ``{'id': ...}``."""
    return [{"id": r} if isinstance(r, str) else {"id": r["id"]} for r in raw]


# ---- the launch rules ------------------------------------------------------------------


def tag_value(tag: str) -> str:
    """Our tag as its value under ``LAMBDA_TAG_KEY``: without the prefix, length checked."""
    value = tag.removeprefix(TAG_PREFIX)
    if not tag.startswith(TAG_PREFIX) or not value:
        raise ValidationError("tag", f"must be {TAG_PREFIX}<token>", value=tag)
    if len(value) > _TAG_VALUE_MAX:
        raise ValidationError("tag", f"Lambda tag values are at most {_TAG_VALUE_MAX} "
                              "characters")
    return value


def launch_name(tag: str, user_name: str | None) -> str:
    """``<tag>/<user name>`` cut to 64 characters; only the user part is ever cut."""
    if len(tag) > LAMBDA_NAME_MAX:
        raise ValidationError("tag", f"longer than Lambda's {LAMBDA_NAME_MAX}-character name",
                              value=tag)
    room = LAMBDA_NAME_MAX - len(tag) - 1
    if not user_name or room <= 0:
        return tag
    return f"{tag}/{user_name[:room]}"


# "cannot exceed 1MB": read as 10**6 bytes, the stricter reading, so we never send a
# body Lambda might refuse after we committed the launch row.
USER_DATA_MAX = 1_000_000
_GPU_COUNT_RE = re.compile(r"^gpu_(\d+)x_")

#: Lambda rents whole VMs of fixed shape: these spec fields would be silently ignored.
_REFUSED: Mapping[str, str] = MappingProxyType({
    "image": "Lambda boots VM images, not containers: give options.image as {'id': ...} "
             "or {'family': ...}",
    "disk_gb": "fixed by the Lambda instance type; leave unset",
    "env": "Lambda VMs take no environment; use command (cloud-init user data)",
    "ports": "Lambda opens ports with firewall rulesets; use options.firewall_rulesets",
})


def check_spec(spec: InstanceSpec) -> LambdaOptions:
    """Lambda's launch rules, checked before anything is written or sent; the options.

    Every spec field is either sent (instance_type, region, name, ssh_key_names, command
    as user data, options), checked against Lambda's own data (max_price_per_hour at
    launch, gpu_count against the type) or refused here (image, disk_gb, env, ports):
    none is silently dropped.
    """
    if len(spec.ssh_key_names) != 1:
        raise ValidationError("ssh_key_names", "Lambda needs exactly one SSH key name",
                              value=list(spec.ssh_key_names))
    if not spec.region:
        raise ValidationError("region", "required: Lambda launches into a named region")
    if spec.region not in LAMBDA_REGIONS:
        raise ValidationError("region", f"not a Lambda region; one of "
                              f"{', '.join(LAMBDA_REGIONS)}", value=spec.region)
    if not spec.instance_type:
        raise ValidationError("instance_type", "required")
    gpus = _GPU_COUNT_RE.match(spec.instance_type)
    if spec.gpu_count is not None and gpus is None:
        raise ValidationError("gpu_count", "fixed by the Lambda instance type; leave "
                              "unset", value=spec.gpu_count)
    if spec.gpu_count is not None and gpus and int(gpus.group(1)) != spec.gpu_count:
        raise ValidationError("gpu_count", f"{spec.instance_type} has {gpus.group(1)} "
                              "GPU(s); the count is fixed by the type",
                              value=spec.gpu_count)
    refuse(spec, _REFUSED)
    if spec.command is not None and len(spec.command.encode()) > USER_DATA_MAX:
        raise ValidationError("command", f"user data is at most {USER_DATA_MAX} bytes")
    return parse_options(LambdaOptions, spec.options, provider="Lambda")
