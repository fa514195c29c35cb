"""A run's outcome as the caller sees it: the EmotionResult built from the graph's final (or last) state."""

from __future__ import annotations

from emo_r3.graphs.state import GraphState
from emo_r3.graphs.trajectory import EmotionResult, ImageRef, Termination, Trajectory


def bad_input_result(query_id: str, label_set: str, error: str) -> EmotionResult:
    """The result of a query whose input was refused before any call (an unreadable image, an unknown label set)."""
    return EmotionResult(query_id=query_id, label=None, label_set=label_set, termination="error", error=error)


def run_result(state: GraphState, *, timed_out: bool = False, timeout: float | None = None) -> EmotionResult:
    """The result of a run from its state: finished, stopped by an error, or cut short by a timeout."""
    query = state["prepared"]
    assert query is not None, "a run without a prepared query ends in bad_input_result"
    reflections, reasonings, perceptions = state["reflections"], state["reasonings"], state["perceptions"]
    termination: Termination
    if timed_out:
        termination, error = "timeout", f"the graph run did not finish within {timeout} s"
    elif state["error"]:
        termination, error = "error", state["error"]
    else:
        termination, error = ("accepted" if reflections[-1].accepted else "max_rounds"), None
    trajectory = Trajectory(
        query_id=query.id,
        label_set=query.label_set.name,
        images=[ImageRef(sha256=i.sha256, width=i.width, height=i.height, source=i.source) for i in query.images],
        text=query.text,
        path=state["path"],
        calls=state["calls"],
        perceptions=perceptions,
        reasonings=reasonings,
        reflections=reflections,
        termination=termination,
        error=error,
    )
    reasoning = reasonings[-1] if reasonings else None
    last_reflection = reflections[-1] if reflections else None
    label_set = query.label_set
    return EmotionResult(
        query_id=query.id,
        label=reasoning.label if reasoning else None,
        label_set=label_set.name,
        valence=(reasoning.valence or label_set.valence.get(reasoning.label)) if reasoning else None,
        arousal=(reasoning.arousal or label_set.arousal.get(reasoning.label)) if reasoning else None,
        rationale=" ".join(f"{perceptions[-1].text} {reasoning.feeling}".split()) if reasoning else "",
        format_ok=bool(reasoning and reasoning.format_ok and perceptions[-1].format_ok),
        label_source=reasoning.label_source if reasoning else None,
        coherence=last_reflection.coherence if last_reflection else None,
        consistency=last_reflection.consistency if last_reflection else None,
        termination=termination,
        error=error,
        trajectory=trajectory,
    )
