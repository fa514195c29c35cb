"""What the trace store gives back: run summaries and details, filters, training steps and the rows they trained on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from emo_r3.graphs.trajectory import EmotionResult


class RunSummary(BaseModel):
    """One row of the run list."""

    id: str
    created_at: float
    source: str
    query_id: str
    input_ref: str | None
    label_set: str
    status: str
    termination: str
    label: str | None
    format_ok: bool
    rounds: int
    path: list[str]
    error: str | None
    latency_s: float
    image_hashes: list[str]


class RunFilter(BaseModel):
    status: Literal["ok", "error"] | None = None
    label: str | None = None
    termination: str | None = None
    since: float | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column in ("status", "label", "termination"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(self.since)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


class TrainingRowRecord(BaseModel):
    """What one training step did with one LLM call: the link from a chart back to the call it trained on."""

    run_id: str
    call_idx: int
    policy: str
    advantage: float
    values: dict[str, float] = {}  # e.g. loss, kl, ratio, clip fraction, entropy for this row


class TrainingStep(BaseModel):
    run_name: str
    step: int
    created_at: float
    metrics: dict[str, float]
    rows: list[TrainingRowRecord] = []


class RunDetail(BaseModel):
    summary: RunSummary
    result: EmotionResult
    rewards: dict[str, dict[str, float]]  # role ("" = whole trajectory) -> name -> value
