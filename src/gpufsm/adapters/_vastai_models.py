"""Vast.ai payloads as pydantic models: lenient, because Vast's own documents disagree.

The spec says ``ports`` is a list of integers, the v1 listing and every real client say a
docker-style ``{"22/tcp": [{"HostIp", "HostPort"}]}`` map; numbers sometimes arrive as
strings; ``public_ipaddr`` may carry a trailing newline. A listing must never fail because
one cosmetic field of one instance is odd (a failed listing is UNKNOWN for *every*
instance), so every field but ``id`` degrades to None instead of raising.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = [
    "VastCreateResponse",
    "VastErrorBody",
    "VastInstance",
    "VastListPage",
    "VastOffer",
    "VastSearchResponse",
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
