"""What a caller asks for: a launch spec, validated before anything is written or called.

Provider-neutral fields live here; each adapter adds its own rules in ``validate`` (Lambda
wants exactly one SSH key, Novita 1 to 8 GPUs …) and reads provider-only knobs from
``options``. Errors are gpufsm ValidationErrors that name the field and the rule.
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from gpufsm.errors import ValidationError
from gpufsm.health import HealthSpec

__all__ = ["InstanceSpec", "parse_spec", "stored_spec"]


class InstanceSpec(BaseModel):
    """One instance to launch. Frozen: a spec is stored as the row's record of intent."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    provider: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_-]*$",
                          description="adapter name, e.g. lambda, vastai, novita, runpod, sim")
    instance_type: str = Field(min_length=1, max_length=128,
                               description="provider's type or product (gpu_1x_a10 …)")
    region: str | None = Field(default=None, max_length=64)
    image: str | None = Field(default=None, max_length=512)
    name: str | None = Field(default=None, max_length=255,
                             description="human name; the ownership tag is added separately")
    ssh_key_names: tuple[str, ...] = ()
    disk_gb: int | None = Field(default=None, ge=1, le=65536)
    gpu_count: int | None = Field(default=None, ge=1, le=64)
    command: str | None = Field(default=None, max_length=1_000_000,
                                description="user data / onstart / container command")
    env: dict[str, str] = Field(default_factory=dict)
    ports: tuple[int, ...] = ()
    max_price_per_hour: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="provider-specific fields, passed through")
    health: HealthSpec | None = Field(default=None, description=(
        "probes that must pass before the instance counts as RUNNING"))

    @pydantic.field_validator("ports")
    @classmethod
    def _ports_in_range(cls, ports: tuple[int, ...]) -> tuple[int, ...]:
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1..65535")
        return ports


def parse_spec(data: object) -> InstanceSpec:
    """Build a spec from untrusted data, turning pydantic's report into our error.

    The first problem is raised with its dotted field path, which is what a user fixing
    a YAML file or a CLI flag needs; pydantic's full report is kept as ``__cause__``.
    """
    if isinstance(data, InstanceSpec):
        return data
    try:
        return InstanceSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "spec"
        raise ValidationError(field, first["msg"], value=first.get("input")) from exc


def stored_spec(spec: InstanceSpec) -> dict[str, Any]:
    """The spec as a row keeps it: every field, but only the *names* of ``env``.

    Environment values passed to an instance are, in practice, tokens (HF_TOKEN,
    WANDB_API_KEY): a database is no place for them, and nothing after the launch needs
    them. The names stay (``env_names``) so a person can see what the instance was given.
    """
    data = spec.model_dump(mode="json", exclude={"env"})
    data["env_names"] = sorted(spec.env)
    return data
