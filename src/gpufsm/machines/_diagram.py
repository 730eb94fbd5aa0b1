"""Draw the table. Generated, never hand-drawn, so the docs cannot drift from the code."""

from __future__ import annotations

from collections.abc import Iterable

from gpufsm.machines._states import EdgeKind
from gpufsm.machines._table import TRANSITIONS, Transition

__all__ = ["to_dot", "to_mermaid"]


def _edges(table: Iterable[Transition]) -> list[tuple[str, str, str, EdgeKind]]:
    out = []
    for t in table:
        for src in t.sources or ("[*]",):
            out.append((str(src), t.dest.value, t.event.value, t.kind))
    return out


def to_mermaid(table: Iterable[Transition] = TRANSITIONS) -> str:
    """A Mermaid ``stateDiagram-v2``; commands are drawn as ``event!`` to stand apart."""
    lines = ["stateDiagram-v2"]
    for src, dest, event, kind in _edges(table):
        label = f"{event}!" if kind is EdgeKind.COMMAND else event
        lines.append(f"    {src} --> {dest}: {label}")
    lines.append("    TERMINATED --> [*]")
    return "\n".join(lines) + "\n"


def to_dot(table: Iterable[Transition] = TRANSITIONS) -> str:
    """Graphviz dot; commands solid, observations dashed, timeouts dotted."""
    style = {EdgeKind.COMMAND: "solid", EdgeKind.OBSERVATION: "dashed", EdgeKind.TIMEOUT: "dotted"}
    lines = ["digraph gpufsm {", "    rankdir=LR;", '    "[*]" [shape=point];',
             "    TERMINATED [shape=doublecircle];"]
    for src, dest, event, kind in _edges(table):
        lines.append(f'    "{src}" -> "{dest}" [label="{event}", style={style[kind]}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
