"""From flags to what to launch: a spec that names the machine, or placement's
Requirements (``--gpu``) with the spec template for whichever machine is chosen.

``gpufsm offers`` and ``gpufsm launch``/``run --gpu`` read the same flags the same way
here, and an error always names the flag a person typed, never the field behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpufsm.cli._common import (
    SpecFlags,
    build_spec,
    check_provider,
    lay_flags,
    load_spec_file,
)
from gpufsm.errors import ValidationError
from gpufsm.placement import Requirements, parse_gpu_arg, parse_requirements
from gpufsm.specs import InstanceSpec

__all__ = ["OfferQuery", "build_placement", "requirements_from", "what_to_launch"]

#: Requirements field → the flag a person typed it with, so an error names the flag.
_FLAGS: Mapping[str, str] = {
    "gpus": "--gpu", "min_vram_gb": "--min-vram", "max_price_per_hour": "--max-price",
    "providers": "--provider", "exclude_providers": "--exclude-provider",
    "regions": "--region",
}


@dataclass(frozen=True)
class OfferQuery:
    """The placement flags as typed (``gpufsm offers``; ``launch``/``run --gpu``)."""

    gpu: str | None = None
    count: int | None = None
    max_price: float | None = None
    min_vram: float | None = None
    providers: Sequence[str] = ()
    exclude_providers: Sequence[str] = ()
    regions: Sequence[str] = ()
    interruptible: bool = False


def requirements_from(query: OfferQuery, *, count_flag: str = "--count") -> Requirements:
    """The flags as placement's ``Requirements``; a bad value is a ValidationError naming
    the flag (``--gpu``, ``--max-price``…); ``count_flag`` is how this command spells the
    GPU count (``--count`` for offers, ``--gpus`` for launch)."""
    for name in (*query.providers, *query.exclude_providers):
        check_provider(name, field="--provider" if name in query.providers
                       else "--exclude-provider")
    gpus: tuple[str, ...] = ()
    count = query.count
    if query.gpu is not None:
        try:
            arg = parse_gpu_arg(query.gpu)
        except ValidationError as exc:  # "gpus"/"count": both were typed as --gpu
            raise ValidationError("--gpu", exc.rule, value=exc.value) from exc
        gpus = arg.gpus
        if ":" in query.gpu:
            if count is not None and count != arg.count:
                raise ValidationError(count_flag, f"{count} disagrees with --gpu "
                                      f"{query.gpu}; give the count once", value=count)
            count = arg.count
    try:
        return parse_requirements({
            "gpus": gpus, "count": 1 if count is None else count,
            "min_vram_gb": query.min_vram, "max_price_per_hour": query.max_price,
            "providers": tuple(query.providers),
            "exclude_providers": tuple(query.exclude_providers),
            "regions": tuple(query.regions), "interruptible": query.interruptible})
    except ValidationError as exc:
        field = exc.field.split(".", 1)[0]
        flag = count_flag if field == "count" else _FLAGS.get(field, exc.field)
        raise ValidationError(flag, exc.rule, value=exc.value) from exc


def build_placement(flags: SpecFlags) -> tuple[Requirements, dict[str, Any]]:
    """``--gpu`` and the narrowing flags as Requirements, the rest as the spec template.

    The machine is placement's choice, so ``--type`` (and a spec file's provider, type
    or region) is refused with what to do instead; ``--provider`` and ``--region`` say
    where placement may look, ``--max-price`` caps the machine's $/h.
    """
    if flags.instance_type is not None:
        raise ValidationError("--type", "placement chooses the type for --gpu; give "
                              "either --gpu or --provider with --type")
    requirements = requirements_from(OfferQuery(
        gpu=flags.gpu, count=flags.gpus, max_price=flags.max_price,
        providers=(flags.provider,) if flags.provider else (),
        regions=(flags.region,) if flags.region else (),
        interruptible=flags.interruptible), count_flag="--gpus")
    data = load_spec_file(flags.spec_file) if flags.spec_file else {}
    for key in ("provider", "instance_type", "region"):
        if data.get(key) is not None:
            raise ValidationError(key, "chosen by placement for --gpu; remove it from the "
                                  "--spec file (narrow with --provider / --region)")
    lay_flags(data, flags)
    return requirements, data


def what_to_launch(flags: SpecFlags
                   ) -> tuple[InstanceSpec | Requirements, dict[str, Any] | None,
                              list[str] | None]:
    """A spec (``--provider`` and ``--type``) or Requirements (``--gpu``) and its spec
    template; and the providers whose adapters it needs (None: every configured one)."""
    if flags.gpu is None:
        spec = build_spec(flags)
        return spec, None, [spec.provider]
    requirements, template = build_placement(flags)
    return requirements, template, list(requirements.providers) or None
