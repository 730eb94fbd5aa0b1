"""Every provider's GPU names, mapped to one canonical model, as data.

A person asks for ``A100``; Lambda says ``gpu_1x_a100_sxm4`` / ``A100 (40 GB SXM4)``, Vast
``A100 SXM4`` with ``gpu_ram`` beside it, RunPod ``NVIDIA A100-SXM4-80GB``, Novita
``A100 SXM 80GB``. Placement can only compare offers across providers once each of those
names is one model, so the mapping lives here as tables (read by one small function,
tested against the names in each provider's contract under
tests/fixtures/provider-api/), never as if-chains scattered through adapters.

How a raw name is read (``name_key``): case and punctuation are ignored, vendor words
(NVIDIA, GeForce, Tesla, Quadro, AMD, Instinct) and count prefixes (``gpu_8x_``, ``1x``)
are dropped, and a VRAM figure written in the name (``80GB``, ``(40 GB PCIe)``) is taken
out as a hint. The key is then looked up in the provider's own table first (where its
words mean something particular: Lambda's bare ``a100`` is the 40 GB card, its
``rtx6000`` the 24 GB Quadro), then in the common table. A table entry names either a
model, which a VRAM hint may move to a sibling of the same family (``a100sxm4`` + 80 GB is
the 80 GB card), or a family, which needs the hint to pick a model (Vast's ``A100 PCIE``
comes as 40 and as 80 GB). A name that is in no table, or that needs a hint and has none,
is *unknown*: ``identify`` returns an :class:`UnknownGpu` that keeps the raw text, so
``gpufsm offers`` shows it as the provider wrote it instead of hiding or guessing.

VRAM figures are the vendor's nominal GB per GPU (80 for an 80 GB A100), which is also
how every provider writes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "COMMON_NAMES",
    "FAMILIES",
    "MODELS",
    "PROVIDER_NAMES",
    "Gpu",
    "GpuModel",
    "UnknownGpu",
    "canonical",
    "identify",
    "name_key",
    "resolve_wanted",
    "vram_hint",
]


@dataclass(frozen=True, slots=True, order=True)
class GpuModel:
    """One GPU model as placement compares it: ``A100-80GB`` in family ``A100``."""

    name: str
    family: str
    vram_gb: int

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class UnknownGpu:
    """A GPU name no table knows: kept verbatim so a person can see what was offered."""

    raw: str

    @property
    def name(self) -> str:
        return f"unknown ({self.raw})"

    def __str__(self) -> str:
        return self.name


#: What an offer's GPU is: a model we know, or the provider's words we do not.
Gpu = GpuModel | UnknownGpu


def _models(*rows: tuple[str, str, int]) -> tuple[GpuModel, ...]:
    return tuple(GpuModel(name, family, vram) for name, family, vram in rows)


#: Every canonical model: (name, family, nominal VRAM in GB per GPU).
MODELS: tuple[GpuModel, ...] = _models(
    # data centre, NVIDIA
    ("A100-40GB", "A100", 40), ("A100-80GB", "A100", 80),
    ("H100-80GB", "H100", 80), ("H100-NVL", "H100", 94),
    ("H200", "H200", 141), ("GH200", "GH200", 96), ("B200", "B200", 180),
    ("A10", "A10", 24), ("A30", "A30", 24), ("A40", "A40", 48),
    ("L4", "L4", 24), ("L40", "L40", 48), ("L40S", "L40S", 48), ("T4", "T4", 16),
    ("V100-16GB", "V100", 16), ("V100-32GB", "V100", 32),
    # workstation, NVIDIA
    ("A2000", "A2000", 6), ("A4000", "A4000", 16), ("A4500", "A4500", 20),
    ("A5000", "A5000", 24), ("A6000", "A6000", 48),
    ("RTX6000", "RTX6000", 24),  # Quadro RTX 6000 (Turing), not the Ada card
    ("RTX2000-ADA", "RTX2000-ADA", 16), ("RTX4000-ADA", "RTX4000-ADA", 20),
    ("RTX5000-ADA", "RTX5000-ADA", 32), ("RTX6000-ADA", "RTX6000-ADA", 48),
    ("RTXPRO6000", "RTXPRO6000", 96),
    # consumer, NVIDIA
    ("RTX3070", "RTX3070", 8), ("RTX3080", "RTX3080", 10), ("RTX3080TI", "RTX3080TI", 12),
    ("RTX3090", "RTX3090", 24), ("RTX3090TI", "RTX3090TI", 24),
    ("RTX4070TI", "RTX4070TI", 12), ("RTX4080", "RTX4080", 16),
    ("RTX4080S", "RTX4080S", 16), ("RTX4090", "RTX4090", 24),
    ("RTX5080", "RTX5080", 16), ("RTX5090", "RTX5090", 32),
    # AMD
    ("MI300X", "MI300X", 192),
)

_BY_NAME: Mapping[str, GpuModel] = MappingProxyType({m.name: m for m in MODELS})

#: Family → its models, smallest VRAM first.
FAMILIES: Mapping[str, tuple[GpuModel, ...]] = MappingProxyType({
    family: tuple(sorted((m for m in MODELS if m.family == family),
                         key=lambda m: (m.vram_gb, m.name)))
    for family in dict.fromkeys(m.family for m in MODELS)
})

#: Name key (see ``name_key``) → a model, or a family when the VRAM must decide.
#: Shared by every provider; each key is a name some provider's contract or emulator uses.
COMMON_NAMES: Mapping[str, str] = MappingProxyType({
    # A100: the name alone does not say 40 or 80 GB; a VRAM hint picks the model.
    "a100": "A100", "a100pcie": "A100", "a100sxm": "A100", "a100sxm4": "A100",
    "h100": "H100-80GB", "h100pcie": "H100-80GB", "h100sxm": "H100-80GB",
    "h100sxm5": "H100-80GB", "h100hbm3": "H100-80GB", "h100nvl": "H100-NVL",
    "h200": "H200", "h200nvl": "H200", "h200sxm": "H200",
    "gh200": "GH200", "gh200sxm": "GH200",
    "b200": "B200", "b200sxm": "B200", "b200sxm6": "B200",
    "a10": "A10", "a10pcie": "A10", "a30": "A30", "rtxa30": "A30", "a40": "A40",
    "l4": "L4", "l40": "L40", "l40s": "L40S", "t4": "T4",
    "v100": "V100", "v100pcie": "V100", "v100sxm2": "V100", "v100fhhl": "V100",
    "rtxa2000": "A2000", "a2000": "A2000", "rtxa4000": "A4000", "a4000": "A4000",
    "rtxa4500": "A4500", "a4500": "A4500", "rtxa5000": "A5000", "a5000": "A5000",
    "rtxa6000": "A6000", "a6000": "A6000",
    "qrtx6000": "RTX6000",
    "rtx2000adageneration": "RTX2000-ADA", "rtx2000ada": "RTX2000-ADA",
    "rtx4000adageneration": "RTX4000-ADA", "rtx4000sffadageneration": "RTX4000-ADA",
    "rtx4000ada": "RTX4000-ADA",
    "rtx5000adageneration": "RTX5000-ADA", "rtx5000ada": "RTX5000-ADA",
    "a5000ada": "RTX5000-ADA",  # RunPod's gpuTypeId spelling of the RTX 5000 Ada
    "rtx6000adageneration": "RTX6000-ADA", "rtx6000ada": "RTX6000-ADA",
    "rtxpro6000": "RTXPRO6000",
    "rtxpro6000blackwellserveredition": "RTXPRO6000",
    "rtxpro6000blackwellworkstationedition": "RTXPRO6000",
    "rtxpro6000blackwellmaxqworkstationedition": "RTXPRO6000",
    "rtx3070": "RTX3070", "rtx3080": "RTX3080", "rtx3080ti": "RTX3080TI",
    "rtx3090": "RTX3090", "rtx3090ti": "RTX3090TI", "rtx4070ti": "RTX4070TI",
    "rtx4080": "RTX4080", "rtx4080super": "RTX4080S", "rtx4090": "RTX4090",
    "rtx5080": "RTX5080", "rtx5090": "RTX5090",
    "mi300x": "MI300X", "mi300xoam": "MI300X",
})

#: Where one provider's words mean something the common table cannot say.
PROVIDER_NAMES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    # Lambda names the 80 GB A100 explicitly (gpu_8x_a100_80gb_sxm4); its bare A100 types
    # are the 40 GB card. Its RTX 6000 is the 24 GB Quadro; gdr is the GPUDirect variant.
    "lambda": MappingProxyType({
        "a100": "A100-40GB", "a100pcie": "A100-40GB", "a100sxm4": "A100-40GB",
        "rtx6000": "RTX6000", "h100sxm5gdr": "H100-80GB",
        "v100": "V100-16GB", "b200sxm6": "B200",
    }),
})

_VRAM = re.compile(r"(?<![a-z0-9])(\d+)\s*gb(?![a-z0-9])")
_TOKEN = re.compile(r"[a-z0-9]+")
_COUNT = re.compile(r"\d+x")
_VENDOR_WORDS = frozenset({"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "gpu"})


def vram_hint(text: str | None) -> int | None:
    """The GB figure written in ``text`` (``A100 (40 GB PCIe)`` → 40), if any."""
    found = _VRAM.search((text or "").casefold())
    return int(found.group(1)) if found else None


def name_key(raw: str) -> tuple[str, int | None]:
    """The lookup key of a raw name and the VRAM it states: ``("a100sxm4", 80)``."""
    text = raw.casefold()
    hint = vram_hint(text)
    tokens = _TOKEN.findall(_VRAM.sub(" ", text))
    kept = [t for t in tokens if t not in _VENDOR_WORDS and not _COUNT.fullmatch(t)]
    return "".join(kept), hint


def _pick(target: str, vram_gb: float | None) -> GpuModel | None:
    """The model a table entry names, moved within its family by a VRAM hint."""
    default = _BY_NAME.get(target)
    family = FAMILIES[default.family if default else target]
    if default is None and len(family) == 1:
        default = family[0]
    if vram_gb is None:
        return default
    return min(family, key=lambda m: (abs(m.vram_gb - vram_gb), m != default))


def canonical(provider: str, raw_name: str, *,
              vram_gb: float | None = None) -> GpuModel | None:
    """The canonical model of ``raw_name`` as ``provider`` writes it, or None if unknown.

    ``vram_gb`` is a hint from elsewhere in the offer (Vast's ``gpu_ram``) for names that
    do not state it; a figure written in the name itself wins.
    """
    key, stated = name_key(raw_name)
    target = PROVIDER_NAMES.get(provider, {}).get(key) or COMMON_NAMES.get(key)
    if target is None:
        return None
    return _pick(target, stated if stated is not None else vram_gb)


def identify(provider: str, raw_name: str, *, vram_gb: float | None = None) -> Gpu:
    """Like ``canonical``, but an unknown name comes back as :class:`UnknownGpu`."""
    return canonical(provider, raw_name, vram_gb=vram_gb) or UnknownGpu(raw_name)


def _compact(name: str) -> str:
    return "".join(_TOKEN.findall(name.casefold()))


#: What a person may type for a GPU (compacted): a model name or a family name.
_WANTED: Mapping[str, tuple[GpuModel, ...]] = MappingProxyType({
    **{_compact(m.name): (m,) for m in MODELS},
    **{_compact(family): models for family, models in FAMILIES.items()},
})


def resolve_wanted(name: str) -> tuple[str, tuple[GpuModel, ...]]:
    """A GPU a person asked for → (its canonical spelling, the models it accepts).

    ``A100`` accepts both A100 models; ``A100-80GB`` only that one; a provider's own
    spelling (``H100 SXM``, ``RTX 4090``) is understood too. Raises ValueError naming
    what is known when nothing matches.
    """
    models = _WANTED.get(_compact(name))
    if models is not None:
        family = models[0].family
        spelled = family if len(models) > 1 or models[0].name == family else models[0].name
        return spelled, models
    model = canonical("", name)
    if model is not None:
        return model.name, (model,)
    known = ", ".join(sorted({*FAMILIES, *(m.name for m in MODELS)}))
    raise ValueError(f"unknown GPU {name!r}; use a model or family gpufsm knows: {known}")
