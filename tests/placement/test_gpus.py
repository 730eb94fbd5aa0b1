"""The GPU-name tables against the names each provider's contract and emulator use.

Names are read from tests/fixtures/provider-api/ (Lambda's spec and examples, RunPod's
gpuTypeId enums, Vast's gpu_name examples) and from the emulator profiles, never copied
here, so a provider name added to a fixture or a profile that the tables do not know
fails this file. Novita's contract lists no product names; its emulator profile does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gpufsm.cli._emulator import PROFILES
from gpufsm.placement import FAMILIES, MODELS, GpuModel, UnknownGpu, canonical, identify
from gpufsm.placement import resolve_wanted as wanted
from gpufsm.placement._gpus import COMMON_NAMES, PROVIDER_NAMES, name_key, vram_hint

API = Path(__file__).parent.parent / "fixtures" / "provider-api"
LAMBDA_TYPE = re.compile(r"\bgpu_\d+x_[a-z0-9_]+")


def _walk(node: Any) -> Iterator[tuple[str | int, Any, Any]]:
    """(key, value, parent) for every entry of a JSON/YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value, node
            yield from _walk(value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield i, value, node
            yield from _walk(value)


def _lambda_docs() -> list[Any]:
    files = [API / "lambda" / "openapi-1.8.3.json", *(API / "lambda" / "examples").glob("*.json")]
    return [json.loads(f.read_text()) for f in files]


def _lambda_types() -> list[dict[str, Any]]:
    """Every InstanceType object (name + gpu_description) in Lambda's spec and examples."""
    return [node for doc in _lambda_docs() for _, node, _ in _walk(doc)
            if isinstance(node, dict) and isinstance(node.get("name"), str)
            and isinstance(node.get("gpu_description"), str)]


def _is_cpu_type(item: dict[str, Any]) -> bool:
    return (item.get("specs") or {}).get("gpus") == 0


LAMBDA_TYPES = _lambda_types()
LAMBDA_NAMES = sorted({m for f in (API / "lambda").rglob("*.json")
                       for m in LAMBDA_TYPE.findall(f.read_text())}
                      | {t["name"] for t in LAMBDA_TYPES if not _is_cpu_type(t)})
LAMBDA_DESCRIPTIONS = sorted({t["gpu_description"] for t in LAMBDA_TYPES
                              if not _is_cpu_type(t)})


def _runpod_ids() -> list[str]:
    ids: set[str] = set()
    for name in ("openapi-rest-v1.json", "openapi-v2.json"):
        doc = json.loads((API / "runpod" / name).read_text())
        for key, value, parent in _walk(doc):
            if key == "enum" and isinstance(value, list) and "NVIDIA A40" in value:
                ids.update(value)
            elif (key in ("gpuTypeId", "gpuTypeIds") and isinstance(parent, dict)
                  and isinstance(value, str)):
                ids.add(value)
            elif key == "gpu" and isinstance(value, dict) and isinstance(value.get("id"), str):
                ids.add(value["id"])
    return sorted(ids)


def _vast_names() -> list[str]:
    """Vast's ``gpu_name`` values: examples, and the names quoted in its descriptions."""
    doc = yaml.safe_load((API / "vastai" / "openapi.yaml").read_text())
    found: set[str] = set()
    for key, value, parent in _walk(doc):
        if key == "gpu_name" and isinstance(value, str):  # a response example
            found.add(value)
            continue
        if key == "gpu_name" and isinstance(value, dict):  # a schema property
            node = value
        elif key == "name" and value == "gpu_name" and isinstance(parent, dict):  # a parameter
            node = parent
        else:
            continue
        for part, text, _ in _walk(node):
            if part == "example" or isinstance(part, int):
                found.update([text] if isinstance(text, str) else [])
            elif part == "description":
                found.update(re.findall(r'"([^"]+)"', text))
    names = {piece.strip() for name in found for piece in name.split(",")}
    return sorted(names - {"eq", "in", "all"})


RUNPOD_IDS = _runpod_ids()
VAST_NAMES = _vast_names()
PROFILE_OFFERS = [o for p in PROFILES.values() for o in p.offers]


def test_the_fixtures_were_read() -> None:
    """A reader that silently finds nothing would make every test below pass vacuously."""
    assert "gpu_1x_a100_sxm4" in LAMBDA_NAMES and "A100 (80 GB SXM4)" in LAMBDA_DESCRIPTIONS
    assert "NVIDIA A100 80GB PCIe" in RUNPOD_IDS and len(RUNPOD_IDS) > 40
    assert {"RTX 4090", "RTX_3090", "H100_SXM", "Imaginary RTX 9999"} <= set(VAST_NAMES)
    assert {p for p in PROFILES} == {"lambda", "novita", "runpod", "vastai"}


@pytest.mark.parametrize("name", LAMBDA_NAMES + LAMBDA_DESCRIPTIONS)
def test_every_lambda_gpu_name_is_a_model(name: str) -> None:
    assert isinstance(canonical("lambda", name), GpuModel), name


@pytest.mark.parametrize("item", [t for t in LAMBDA_TYPES if not _is_cpu_type(t)],
                         ids=lambda t: f"{t['name']}={t['gpu_description']}")
def test_a_lambda_type_name_and_its_description_agree(item: dict[str, Any]) -> None:
    """gpu_8x_a100 and "A100 (40 GB SXM4)" must be the same card."""
    assert canonical("lambda", item["name"]) == canonical("lambda", item["gpu_description"])


def test_lambda_cpu_types_have_no_gpu() -> None:
    cpu = [t for t in LAMBDA_TYPES if _is_cpu_type(t)]
    assert cpu, "the example lists a CPU type"
    for item in cpu:
        gpu = identify("lambda", item["gpu_description"])
        assert gpu == UnknownGpu(item["gpu_description"])


@pytest.mark.parametrize("name", RUNPOD_IDS)
def test_every_runpod_gpu_type_id_is_a_model(name: str) -> None:
    if name.startswith("AMD"):
        assert canonical("runpod", name) == GpuModel("MI300X", "MI300X", 192)
    assert isinstance(canonical("runpod", name), GpuModel), name


@pytest.mark.parametrize("name", [n for n in VAST_NAMES if not n.startswith("Imaginary")])
def test_every_vast_gpu_name_is_a_model(name: str) -> None:
    assert isinstance(canonical("vastai", name), GpuModel), name


def test_vasts_made_up_gpu_stays_unknown_with_its_text() -> None:
    made_up = next(n for n in VAST_NAMES if n.startswith("Imaginary"))
    assert canonical("vastai", made_up) is None
    gpu = identify("vastai", made_up)
    assert isinstance(gpu, UnknownGpu) and gpu.raw == made_up and made_up in str(gpu)


@pytest.mark.parametrize("offer", PROFILE_OFFERS, ids=lambda o: f"{o.provider}:{o.name}")
def test_every_emulator_profile_gpu_is_a_model(offer: Any) -> None:
    by_name = canonical(offer.provider, offer.name, vram_gb=vram_hint(offer.gpu_description))
    by_description = canonical(offer.provider, offer.gpu_description,
                               vram_gb=vram_hint(offer.name))
    assert isinstance(by_name, GpuModel), offer.name
    assert by_description in (None, by_name), (offer.name, offer.gpu_description)


@pytest.mark.parametrize("name", sorted({*RUNPOD_IDS, *LAMBDA_DESCRIPTIONS, *LAMBDA_NAMES}))
def test_a_vram_figure_in_the_name_is_the_models_vram(name: str) -> None:
    provider = "lambda" if name in LAMBDA_NAMES or name in LAMBDA_DESCRIPTIONS else "runpod"
    stated = name_key(name)[1]
    model = canonical(provider, name)
    assert model is not None
    if stated is not None:
        assert model.vram_gb == stated, name


@pytest.mark.parametrize(("provider", "raw", "vram", "expected"), [
    ("vastai", "A100 SXM4", 80, "A100-80GB"),
    ("vastai", "A100 PCIE", 40, "A100-40GB"),
    ("vastai", "A100 PCIE", None, None),  # 40 or 80: unknown rather than a guess
    ("lambda", "gpu_1x_a100", None, "A100-40GB"),  # Lambda's bare A100 is the 40 GB card
    ("lambda", "RTX 6000 (24 GB)", None, "RTX6000"),  # the Quadro, not the Ada card
    ("runpod", "NVIDIA RTX 6000 Ada Generation", None, "RTX6000-ADA"),
    ("vastai", "H100 NVL", 93, "H100-NVL"),
    ("novita", "H100 SXM 80GB", None, "H100-80GB"),
])
def test_vram_decides_between_siblings(provider: str, raw: str, vram: int | None,
                                       expected: str | None) -> None:
    model = canonical(provider, raw, vram_gb=vram)
    assert (model.name if model else None) == expected


def test_a_family_accepts_its_variants_and_a_model_only_itself() -> None:
    assert wanted("A100") == ("A100", FAMILIES["A100"])
    assert {m.name for m in wanted("a100")[1]} == {"A100-40GB", "A100-80GB"}
    assert [m.name for m in wanted("A100-80GB")[1]] == ["A100-80GB"]
    assert wanted("h100 sxm")[0] == "H100-80GB"  # a provider's spelling is understood
    with pytest.raises(ValueError, match=r"unknown GPU 'A999'.*A100-80GB"):
        wanted("A999")


def test_every_model_and_family_resolves_to_itself() -> None:
    for model in MODELS:
        assert wanted(model.name)[1] in ((model,), FAMILIES[model.family])
        assert model in wanted(model.name)[1]
    for family, models in FAMILIES.items():
        assert wanted(family) == (family, models)


def test_the_tables_name_only_real_models_or_families() -> None:
    names = {m.name for m in MODELS} | set(FAMILIES)
    targets = [*COMMON_NAMES.values(), *(v for t in PROVIDER_NAMES.values() for v in t.values())]
    assert set(targets) <= names
    keys = [*COMMON_NAMES, *(k for t in PROVIDER_NAMES.values() for k in t)]
    assert all(name_key(k) == (k, None) for k in keys), "a key must be its own key"


@given(st.text(max_size=40), st.sampled_from(["lambda", "novita", "runpod", "vastai", "x"]),
       st.none() | st.integers(1, 300))
def test_identify_is_total(raw: str, provider: str, vram: int | None) -> None:
    """Any text is a model or an UnknownGpu holding that text; nothing raises."""
    gpu = identify(provider, raw, vram_gb=vram)
    assert isinstance(gpu, GpuModel) or gpu == UnknownGpu(raw)
    if isinstance(gpu, GpuModel):
        key = name_key(raw)[0]
        assert key in COMMON_NAMES or key in PROVIDER_NAMES.get(provider, {})
