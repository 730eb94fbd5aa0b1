"""What a person asks of placement: a GPU, not a provider.

``Requirements`` says which machines are acceptable (GPU models or families, how many
GPUs, VRAM, a price cap, providers and regions allowed or excluded, whether a spot/bid
machine will do); ranking (``_rank``) turns it into an ordered list of offers. It
deliberately does not repeat what a launch needs beyond the choice of machine (image,
disk, SSH keys, command, env, ports, health): those stay in :class:`gpufsm.InstanceSpec`.
How the two combine, once placement launches: the caller gives a spec *template* (an
``InstanceSpec`` field mapping without ``provider``/``instance_type``/``region``), and
for each offer tried, the launcher fills those three from the offer, ``gpu_count`` from
the offer's count, and ``max_price_per_hour`` from the requirements, then validates it
with ``parse_spec`` and the adapter's own ``validate`` as any launch does. Keeping the
template outside this model means one set of launch fields, validated in one place.

Errors name the field and say what to do: pydantic's report when the model is built
directly, a :class:`gpufsm.ValidationError` from ``parse_requirements`` and
``parse_gpu_arg`` (the CLI's ``--gpu A100:1`` form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from gpufsm.errors import ValidationError
from gpufsm.placement._gpus import GpuModel, resolve_wanted

__all__ = ["GpuArg", "Requirements", "parse_gpu_arg", "parse_requirements"]

_PROVIDER = re.compile(r"^[a-z][a-z0-9_-]*$")
_MAX_GPUS = 64  # as InstanceSpec.gpu_count


def _names(value: object) -> object:
    """One name may be given alone: ``"A100"`` means ``("A100",)``."""
    return (value,) if isinstance(value, str) else value


class Requirements(BaseModel):
    """Which offers are acceptable. Empty tuples mean "any"."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    gpus: tuple[str, ...] = Field(default=(), description=(
        "acceptable GPU models or families, e.g. A100 (either A100), A100-80GB, H100; "
        "empty: any GPU"))
    count: int = Field(default=1, ge=1, le=_MAX_GPUS, description="GPUs per machine")
    min_vram_gb: float | None = Field(default=None, gt=0, description="per GPU")
    max_price_per_hour: float | None = Field(default=None, gt=0,
                                             description="US$ per hour for the machine")
    providers: tuple[str, ...] = Field(default=(), description="only these; empty: all")
    exclude_providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = Field(default=(), description="only these; empty: all")
    exclude_regions: tuple[str, ...] = ()
    interruptible: bool = Field(default=False, description=(
        "spot/bid machines are acceptable too (cheaper, may be taken back)"))

    @pydantic.field_validator("gpus", "providers", "exclude_providers", "regions",
                              "exclude_regions", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return _names(value)

    @pydantic.field_validator("gpus")
    @classmethod
    def _known_gpus(cls, gpus: tuple[str, ...]) -> tuple[str, ...]:
        """Each name is spelled canonically (``a100`` → ``A100``), once."""
        return tuple(dict.fromkeys(resolve_wanted(name)[0] for name in gpus))

    @pydantic.field_validator("providers", "exclude_providers")
    @classmethod
    def _provider_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not _PROVIDER.match(name):
                raise ValueError(f"{name!r} is not a provider name; use the registry "
                                 "key, e.g. lambda, vastai, runpod, novita")
        return tuple(dict.fromkeys(names))

    @pydantic.field_validator("regions", "exclude_regions")
    @classmethod
    def _region_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name for name in names):
            raise ValueError("a region name is empty; give the provider's region name")
        return tuple(dict.fromkeys(names))

    @pydantic.model_validator(mode="after")
    def _no_contradiction(self) -> Requirements:
        both = set(self.providers) & set(self.exclude_providers)
        if both:
            raise ValueError(f"exclude_providers: {', '.join(sorted(both))} is both allowed "
                             "and excluded; drop it from one of providers/exclude_providers")
        folded = {r.casefold() for r in self.exclude_regions}
        clash = sorted(r for r in self.regions if r.casefold() in folded)
        if clash:
            raise ValueError(f"exclude_regions: {', '.join(clash)} is both allowed and "
                             "excluded; drop it from one of regions/exclude_regions")
        return self

    @property
    def models(self) -> frozenset[GpuModel]:
        """Every model the requirements accept; empty when any GPU will do."""
        return frozenset(m for name in self.gpus for m in resolve_wanted(name)[1])


def parse_requirements(data: object) -> Requirements:
    """Build requirements from untrusted data; the first problem becomes our error.

    As ``parse_spec``: the error names the dotted field and the rule, pydantic's whole
    report is kept as ``__cause__``.
    """
    if isinstance(data, Requirements):
        return data
    try:
        return Requirements.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "requirements"
        message = first["msg"].removeprefix("Value error, ")
        if field == "requirements" and ": " in message:  # a model-level check names it
            field, message = message.split(": ", 1)
        raise ValidationError(field, message, value=first.get("input")) from exc


@dataclass(frozen=True, slots=True)
class GpuArg:
    """``--gpu H100,A100-80GB:8`` read: the acceptable GPUs and the count."""

    gpus: tuple[str, ...]
    count: int


def parse_gpu_arg(text: str) -> GpuArg:
    """Read the CLI form ``MODEL[,MODEL...][:COUNT]``; the count defaults to 1.

    Errors are ``ValidationError("gpus" | "count", what to type instead)``.
    """
    names, sep, count_text = text.strip().partition(":")
    count = 1
    if sep:
        if not count_text.strip().isdigit():
            raise ValidationError("count", f"{count_text!r} after ':' is not a whole "
                                  "number; write e.g. A100:2", value=text)
        count = int(count_text)
        if not 1 <= count <= _MAX_GPUS:
            raise ValidationError("count", f"must be 1..{_MAX_GPUS} GPUs; write e.g. "
                                  "A100:8", value=count)
    gpus = tuple(n.strip() for n in names.split(","))
    if not any(gpus) or not all(gpus):
        raise ValidationError("gpus", "name at least one GPU, comma-separated, e.g. "
                              "A100 or H100,A100-80GB:8", value=text)
    spelled = []
    for name in gpus:
        try:
            spelled.append(resolve_wanted(name)[0])
        except ValueError as exc:
            raise ValidationError("gpus", str(exc), value=name) from exc
    return GpuArg(tuple(dict.fromkeys(spelled)), count)
