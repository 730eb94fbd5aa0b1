"""Vast.ai payloads and options as pydantic models, and the launch rules they carry.

Payloads are lenient, because Vast's own documents disagree; options are strict.

The spec says ``ports`` is a list of integers, the v1 listing and every real client say a
docker-style ``{"22/tcp": [{"HostIp", "HostPort"}]}`` map; numbers sometimes arrive as
strings; ``public_ipaddr`` may carry a trailing newline. A listing must never fail because
one cosmetic field of one instance is odd (a failed listing is UNKNOWN for *every*
instance), so every field but ``id`` degrades to None instead of raising.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from gpufsm.adapters._dialect import parse_options, refuse
from gpufsm.errors import ValidationError
from gpufsm.specs import InstanceSpec

__all__ = [
    "LABEL_MAX",
    "VAST_CREATE_OPTIONS",
    "VAST_FILTER_OPS",
    "VAST_RUNTYPES",
    "VastCreateResponse",
    "VastErrorBody",
    "VastInstance",
    "VastListPage",
    "VastOffer",
    "VastOptions",
    "VastSearchResponse",
    "check_spec",
    "normalize_gpu_name",
    "whole_number",
]


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


LooseInt = Annotated[int | None, BeforeValidator(_int_or_none)]
LooseFloat = Annotated[float | None, BeforeValidator(_float_or_none)]
LooseStr = Annotated[str | None, BeforeValidator(_str_or_none)]
LooseBool = Annotated[bool | None, BeforeValidator(_bool_or_none)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class VastInstance(_Lenient):
    """One instance (``/instances/{id}/``, both listings). Only ``id`` is mandatory."""

    id: int
    actual_status: LooseStr = None
    intended_status: LooseStr = None
    cur_state: LooseStr = None
    next_state: LooseStr = None
    label: Annotated[str | None, BeforeValidator(
        lambda v: v if isinstance(v, str) else None)] = None
    status_msg: LooseStr = None
    public_ipaddr: LooseStr = None
    ssh_host: LooseStr = None
    ssh_port: LooseInt = None
    ports: Any = None  # docker map in practice, int list in the spec: read by direct_ssh_port
    geolocation: LooseStr = None
    gpu_name: LooseStr = None
    num_gpus: LooseInt = None
    dph_total: LooseFloat = None
    is_bid: LooseBool = None
    machine_id: LooseInt = None

    @property
    def direct_ssh_port(self) -> int | None:
        """Host port mapped to the container's 22/tcp, when Vast reports a docker map."""
        if not isinstance(self.ports, dict):
            return None
        bindings = self.ports.get("22/tcp")
        if not isinstance(bindings, list):
            return None
        for binding in bindings:
            if isinstance(binding, dict):
                port = _int_or_none(binding.get("HostPort"))
                if port is not None and 0 < port < 65536:
                    return port
        return None


class VastListPage(_Lenient):
    """One page of ``GET /api/v1/instances``; instances are parsed one by one."""

    success: LooseBool = None
    instances: list[Any]
    next_token: LooseStr = None
    total_instances: LooseInt = None
    instances_found: LooseInt = None


class VastOffer(_Lenient):
    """One ask from ``POST /api/v0/bundles/``; ``id`` is what ``PUT /asks/{id}/`` takes."""

    id: int
    gpu_name: LooseStr = None
    num_gpus: LooseInt = None
    dph_total: LooseFloat = None
    min_bid: LooseFloat = None
    geolocation: LooseStr = None
    gpu_ram: LooseInt = None
    machine_id: LooseInt = None
    reliability2: LooseFloat = None
    disk_space: LooseFloat = None


class VastSearchResponse(_Lenient):
    offers: list[Any]


class VastCreateResponse(_Lenient):
    success: LooseBool = None
    new_contract: LooseInt = None


class VastErrorBody(_Lenient):
    """Every error shape Vast uses: ``{success, error, msg}``, ``message``, ``detail``."""

    success: LooseBool = None
    error: LooseStr = None
    msg: LooseStr = None
    message: LooseStr = None
    detail: Any = None

    @property
    def text(self) -> str | None:
        for value in (self.msg, self.message, self.detail):
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None


# ---- options ---------------------------------------------------------------------------

#: ``runtype`` values the create endpoint accepts (openapi enum).
VAST_RUNTYPES = frozenset({
    "ssh", "jupyter", "args", "ssh_proxy", "ssh_direct", "jupyter_proxy", "jupyter_direct",
})
#: Words a ``runtype`` may combine, space-separated: the enum, plus what Vast's own CLI and
#: SDK send for direct connections (``--ssh --direct`` is "ssh_direc ssh_proxy"; the v1
#: listing's example ``image_runtype`` reads "ssh ssh_direc ssh_proxy").
_RUNTYPE_WORDS = VAST_RUNTYPES | {"ssh_direc", "jupyter_direc"}
VAST_FILTER_OPS = frozenset({"eq", "neq", "gt", "lt", "gte", "lte", "in", "notin"})

#: Documented create-instance fields a spec may pass through ``options`` unchanged.
VAST_CREATE_OPTIONS = frozenset({
    "template_hash_id", "target_state", "cancel_unavail", "vm", "args", "args_str",
    "use_jupyter_lab", "jupyter_dir", "python_utf8", "lang_utf8", "force", "user",
    "image_login", "volume_info",
})


# ---- options and the launch rules ------------------------------------------------------

_ONSTART_MAX = 4048  # openapi: "onstart field is limited to 4048 characters"
LABEL_MAX = 1024
_GPU_MAX = 16
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def normalize_gpu_name(name: str) -> str:
    """``RTX_4090`` and ``RTX 4090`` both mean the card Vast reports as ``RTX 4090``.

    The official CLI turns underscores into spaces (its query language cannot quote),
    and offers and instances report names with spaces, so that is what we send.
    """
    return " ".join(name.replace("_", " ").split())


def whole_number(value: Any) -> int | None:
    """An int, or a string of digits; None for anything else (a bool is not a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _whole(value: Any) -> int:
    number = whole_number(value)
    if number is None:
        raise ValueError("an integer")
    return number


def _runtype(value: str) -> str:
    if not value.split() or not set(value.split()) <= _RUNTYPE_WORDS:
        raise ValueError("one or more (space-separated) of "
                         f"{', '.join(sorted(_RUNTYPE_WORDS))}")
    return value


def _condition(cond: dict[str, Any]) -> dict[str, Any]:
    if not cond or set(cond) - VAST_FILTER_OPS:
        raise ValueError(f"{{op: value}} with op one of {', '.join(sorted(VAST_FILTER_OPS))}")
    return cond


_Whole = Annotated[int, BeforeValidator(_whole)]
_Count = Annotated[int, BeforeValidator(_whole), Field(ge=1)]


class VastOptions(BaseModel):
    """``InstanceSpec.options`` for Vast: what the adapter reads, then the documented
    create-instance fields passed through unchanged (``VAST_CREATE_OPTIONS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer_id: _Whole | None = None
    filters: dict[str, Annotated[dict[str, Any], AfterValidator(_condition)]] | None = None
    runtype: Annotated[str, Field(strict=True), AfterValidator(_runtype)] | None = None
    price: Annotated[float, Field(strict=True, ge=0.001, le=128.0)] | None = None  # a bid, $/h
    interruptible: StrictBool | None = None
    search_limit: _Count | None = None
    max_offer_attempts: _Count | None = None
    target_state: Literal["running", "stopped"] | None = None
    template_hash_id: Any = None
    cancel_unavail: Any = None
    vm: Any = None
    args: Any = None
    args_str: Any = None
    use_jupyter_lab: Any = None
    jupyter_dir: Any = None
    python_utf8: Any = None
    lang_utf8: Any = None
    force: Any = None
    user: Any = None
    image_login: Any = None
    volume_info: Any = None


#: Vast installs the account's SSH keys itself: key names are refused, not dropped.
_REFUSED: Mapping[str, str] = MappingProxyType({
    "ssh_key_names": "Vast installs the SSH keys registered on the account and takes no "
                     "key names: add the key in the Vast console and leave this empty",
})


def check_spec(spec: InstanceSpec) -> VastOptions:
    """Refuse locally what Vast would refuse (or silently mangle) at launch; the options.

    Every spec field is either sent (instance_type, gpu_count, region, disk_gb and
    max_price_per_hour as search filters; image, name as the label, command as onstart,
    env and ports as docker flags, options) or refused here (ssh_key_names): none is
    silently dropped.
    """
    if not spec.image:
        raise ValidationError("image", "required: Vast launches a Docker image")
    refuse(spec, _REFUSED)
    if not normalize_gpu_name(spec.instance_type):
        raise ValidationError("instance_type", "a Vast GPU name such as RTX_4090")
    if spec.disk_gb is not None and spec.disk_gb < 1:
        raise ValidationError("disk_gb", "at least 1 GB", value=spec.disk_gb)
    if spec.gpu_count is not None and not 1 <= spec.gpu_count <= _GPU_MAX:
        raise ValidationError("gpu_count", f"Vast offers 1..{_GPU_MAX} GPUs",
                              value=spec.gpu_count)
    if spec.name is not None and len(spec.name) > LABEL_MAX - 64:
        raise ValidationError("name", f"at most {LABEL_MAX - 64} characters: the label "
                              f"'<tag>/<name>' is limited to {LABEL_MAX}")
    if spec.command is not None and len(spec.command) > _ONSTART_MAX:
        raise ValidationError("command", f"Vast's onstart is limited to {_ONSTART_MAX} "
                              "characters: gzip+base64 a longer script")
    _check_env(spec.env)
    options = parse_options(VastOptions, spec.options, provider="Vast")
    price, limit = options.price, spec.max_price_per_hour
    if price is not None and limit is not None and price > limit:
        raise ValidationError("options.price", f"a bid of ${price}/h exceeds "
                              f"max_price_per_hour ${limit}/h", value=price)
    return options


def _check_env(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValidationError(f"env.{key}", "a shell variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if any(c.isspace() for c in value):
            raise ValidationError(f"env.{key}", "no whitespace: Vast takes env as one "
                                  "docker-flag string")
