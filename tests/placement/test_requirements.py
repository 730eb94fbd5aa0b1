"""Requirements and the ``--gpu`` argument: what is accepted, and errors that name the
field and say what to type instead."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from gpufsm import ValidationError
from gpufsm.placement import (
    FAMILIES,
    GpuArg,
    Requirements,
    parse_gpu_arg,
    parse_requirements,
)


def test_defaults_ask_for_one_gpu_of_any_kind_on_demand() -> None:
    req = Requirements()
    assert (req.gpus, req.count, req.interruptible, req.models) == ((), 1, False, frozenset())


def test_names_are_spelled_canonically_once() -> None:
    req = Requirements(gpus=["a100", "A100", "h100-80gb", "RTX 4090"])
    assert req.gpus == ("A100", "H100-80GB", "RTX4090")
    assert {m.name for m in req.models} == {"A100-40GB", "A100-80GB", "H100-80GB", "RTX4090"}


def test_one_name_may_be_given_alone() -> None:
    req = Requirements(gpus="A100-80GB", providers="lambda", regions="us-east-1")
    assert (req.gpus, req.providers, req.regions) == (("A100-80GB",), ("lambda",),
                                                       ("us-east-1",))


def test_requirements_are_frozen_and_hashable() -> None:
    req = Requirements(gpus=["A100"])
    assert hash(req) == hash(Requirements(gpus=("A100",)))
    with pytest.raises(pydantic.ValidationError):
        req.count = 2  # type: ignore[misc]


@pytest.mark.parametrize(("data", "field", "says"), [
    ({"gpus": ["A999"]}, "gpus", "use a model or family gpufsm knows: A10, A100"),
    ({"count": 0}, "count", "greater than or equal to 1"),
    ({"count": 65}, "count", "less than or equal to 64"),
    ({"min_vram_gb": 0}, "min_vram_gb", "greater than 0"),
    ({"max_price_per_hour": -1}, "max_price_per_hour", "greater than 0"),
    ({"providers": ["Lambda Labs"]}, "providers", "use the registry key"),
    ({"regions": [""]}, "regions", "give the provider's region name"),
    ({"providers": ["vastai", "lambda"], "exclude_providers": ["lambda"]},
     "exclude_providers", "drop it from one of providers/exclude_providers"),
    ({"regions": ["US-TX-3"], "exclude_regions": ["us-tx-3"]},
     "exclude_regions", "drop it from one of regions/exclude_regions"),
    ({"image": "pytorch"}, "image", "Extra inputs are not permitted"),
])
def test_errors_name_the_field_and_say_what_to_do(data: dict[str, Any], field: str,
                                                  says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_requirements(data)
    assert caught.value.field == field
    assert says in caught.value.rule
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)


def test_parse_requirements_passes_a_built_one_through() -> None:
    req = Requirements(gpus=["H100"])
    assert parse_requirements(req) is req
    assert parse_requirements({"gpus": ["H100"], "count": 8}).count == 8


@pytest.mark.parametrize(("text", "expected"), [
    ("A100", GpuArg(("A100",), 1)),
    ("A100:1", GpuArg(("A100",), 1)),
    ("H100,A100-80GB:8", GpuArg(("H100", "A100-80GB"), 8)),
    (" rtx4090 : 2 ", GpuArg(("RTX4090",), 2)),
    ("A100,a100", GpuArg(("A100",), 1)),
])
def test_gpu_arg_forms(text: str, expected: GpuArg) -> None:
    assert parse_gpu_arg(text) == expected


def test_a_gpu_arg_makes_requirements() -> None:
    arg = parse_gpu_arg("H100,A100-80GB:8")
    req = Requirements(gpus=arg.gpus, count=arg.count)
    assert {m.family for m in req.models} == {"H100", "A100"}
    assert FAMILIES["H100"][0] in req.models


@pytest.mark.parametrize(("text", "field", "says"), [
    ("A100:x", "count", "is not a whole number; write e.g. A100:2"),
    ("A100:", "count", "is not a whole number"),
    ("A100:0", "count", "must be 1..64"),
    ("A100:-1", "count", "is not a whole number"),
    ("", "gpus", "name at least one GPU"),
    (":2", "gpus", "name at least one GPU"),
    ("A100,,H100", "gpus", "name at least one GPU"),
    ("A100,B999:2", "gpus", "unknown GPU 'B999'"),
])
def test_gpu_arg_errors(text: str, field: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_gpu_arg(text)
    assert caught.value.field == field
    assert says in caught.value.rule
