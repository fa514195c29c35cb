"""A run's path through the graph as an SVG layout: one column per node kind, one row per round."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from emo_r3.graphs.trajectory import Reflection

NODE_COLUMNS = {"perceive": 0, "reason": 1, "reflect": 2, "finalize": 3}
NODE_W, NODE_H, PITCH_X, PITCH_Y, LEFT, TOP = 124, 46, 176, 92, 78, 16
DECISION_LABELS = {"revise_perception": "revise perception", "revise_reasoning": "revise reasoning"}


@dataclass(frozen=True)
class SvgNode:
    step: int
    name: str
    x: int
    y: int
    css: str
    caption: str
    width: int = NODE_W
    height: int = NODE_H

    @property
    def cx(self) -> int:
        return self.x + self.width // 2

    @property
    def order_x(self) -> int:
        return self.x + 8

    @property
    def text_y(self) -> tuple[int, int, int]:
        """Baselines of the order badge, the node name and the caption."""
        return self.y + 14, self.y + 20, self.y + 37


@dataclass(frozen=True)
class SvgEdge:
    x1: int
    y1: int
    x2: int
    y2: int
    kind: str
    label: str

    @property
    def label_x(self) -> int:
        return (self.x1 + self.x2) // 2 + (8 if self.kind == "revise" else 0)

    @property
    def label_y(self) -> int:
        return (self.y1 + self.y2) // 2 - (0 if self.kind == "revise" else 6)


@dataclass(frozen=True)
class PathDiagram:
    width: int
    height: int
    nodes: list[SvgNode]
    edges: list[SvgEdge]
    rows: list[tuple[int, str]]  # (y, "round N") labels down the left margin


def layout_path(path: Sequence[str], reflections: Sequence[Reflection], termination: str) -> PathDiagram | None:
    """The run unrolled: one column per node kind, one row per round, so every correction is a visible arrow
    back to the left, and the arrow into finalize is coloured by what ended the run."""
    if not path:
        return None
    reflect_at = _reflection_per_step(path, reflections)
    nodes: list[SvgNode] = []
    row = 0
    for step, name in enumerate(path):
        column = NODE_COLUMNS.get(name, 3)
        if nodes and column <= NODE_COLUMNS.get(nodes[-1].name, 3):
            row += 1
        x, y = LEFT + column * PITCH_X, TOP + row * PITCH_Y
        css, caption = _node_style(name, step, path, reflect_at.get(step), termination)
        nodes.append(SvgNode(step, name, x, y, css, caption))
    edges = [_edge(a, b, reflect_at.get(a.step), termination) for a, b in itertools.pairwise(nodes)]
    rows = [(TOP + r * PITCH_Y + NODE_H // 2 + 4, f"round {r}") for r in range(row + 1)]
    return PathDiagram(LEFT + 3 * PITCH_X + NODE_W + 16, TOP + row * PITCH_Y + NODE_H + 16, nodes, edges, rows)


def _reflection_per_step(path: Sequence[str], reflections: Sequence[Reflection]) -> dict[int, Reflection]:
    """The k-th visit to reflect made the k-th reflection (a reflect that failed made none, and was last)."""
    steps = [step for step, name in enumerate(path) if name == "reflect"]
    return dict(zip(steps, reflections, strict=False))


def _node_style(
    name: str, step: int, path: Sequence[str], reflection: Reflection | None, termination: str
) -> tuple[str, str]:
    failed_here = termination in ("error", "timeout") and _last_work_step(path) == step
    if name == "finalize":
        return f"node node-finalize end-{termination}", termination.replace("_", " ")
    if failed_here:
        return f"node node-{name} node-failed", termination
    if name == "reflect" and reflection is not None:
        return f"node node-reflect decision-{reflection.decision}", _verdict_caption(reflection)
    return f"node node-{name}", f"step {step}"


def _last_work_step(path: Sequence[str]) -> int:
    work = [step for step, name in enumerate(path) if name != "finalize"]
    return work[-1] if work else -1


def _verdict_caption(reflection: Reflection) -> str:
    marks = []
    if reflection.coherence is not None:
        marks.append("coh " + ("✓" if reflection.coherence.passed else "✗"))
    if reflection.consistency is not None:
        marks.append("con " + ("✓" if reflection.consistency.passed else "✗"))
    return " · ".join(marks) or reflection.decision


def _edge(a: SvgNode, b: SvgNode, reflection: Reflection | None, termination: str) -> SvgEdge:
    if b.y > a.y:  # a correction: from the bottom of reflect down-left to the node it sends the answer back to
        label = DECISION_LABELS.get(reflection.decision, "back") if reflection else "back"
        return SvgEdge(a.x + NODE_W // 2, a.y + NODE_H, b.x + NODE_W // 2, b.y, "revise", label)
    kind, label = "next", ""
    if b.name == "finalize":
        kind = reflection.decision if reflection else ("error" if termination in ("error", "timeout") else "next")
        label = kind if kind != "next" else ""
    return SvgEdge(a.x + NODE_W, a.y + NODE_H // 2, b.x, b.y + NODE_H // 2, kind, label)
