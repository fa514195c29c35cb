"""One evaluated item: the gold label, the graph's answer, and what the metrics need from its trajectory."""

from __future__ import annotations

from pydantic import Field

from emo_r3.evals.items import EvalItem
from emo_r3.graphs.results_file import ResultRecord
from emo_r3.graphs.trajectory import EmotionResult


class PredictionRecord(ResultRecord):
    """A line of predictions.jsonl. `first_label` is the reasoner's first answer, `prediction` the final one,
    so reflection flips (wrong→right, right→wrong) can be counted."""

    label: str
    label_set: str
    prediction: str | None = None
    first_label: str | None = None
    run_id: str | None = None
    termination: str | None = None
    format_ok: bool = False
    rounds: int = 0
    coherence_passed: list[bool] = Field(default_factory=list, description="per round")
    consistency_passed: list[bool] = Field(default_factory=list, description="per round")
    accepted: bool = False
    node_latency_s: dict[str, float] = Field(default_factory=dict, description="summed per node")
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_result(cls, item: EvalItem, result: EmotionResult) -> PredictionRecord:
        trajectory = result.trajectory
        reflections = trajectory.reflections if trajectory else []
        calls = trajectory.calls if trajectory else []
        latency: dict[str, float] = {}
        for call in calls:
            latency[call.node] = latency.get(call.node, 0.0) + call.latency_s
        return cls(
            id=item.id,
            status="ok" if result.ok else "error",
            label=item.label,
            label_set=result.label_set,
            prediction=result.label,
            first_label=trajectory.reasonings[0].label if trajectory and trajectory.reasonings else None,
            run_id=trajectory.id if trajectory else None,
            termination=result.termination,
            format_ok=result.format_ok,
            rounds=trajectory.corrections if trajectory else 0,
            coherence_passed=[r.coherence.passed for r in reflections if r.coherence],
            consistency_passed=[r.consistency.passed for r in reflections if r.consistency],
            accepted=result.termination == "accepted",
            node_latency_s=latency,
            prompt_tokens=sum(len(c.prompt_token_ids) for c in calls),
            completion_tokens=sum(len(c.completion_token_ids) for c in calls),
            error=result.error,
        )
