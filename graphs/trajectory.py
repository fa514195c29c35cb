"""What goes into a graph run (EmotionQuery) and what comes out (EmotionResult carrying its Trajectory)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.perceiver import Perception
from emo_r3.agents.reasoner import Reasoning
from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict

MAX_TEXT_CHARS = 4000

Termination = Literal["accepted", "max_rounds", "error", "timeout"]
Decision = Literal["accept", "revise_perception", "revise_reasoning", "stop"]


class EmotionQuery(BaseModel):
    """One input: image(s), optional text context, and optionally a label set other than the config's."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    images: list[str | Path | bytes] = Field(min_length=1)
    text: str | None = None
    label_set: str | list[str] | None = None

    @field_validator("text")
    @classmethod
    def _text_is_usable(cls, text: str | None) -> str | None:
        if text is None or not text.strip():
            return None
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(
                f"text is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}; "
                "shorten the context (it is a hint for the image, not a document)"
            )
        return text.strip()


class Reflection(BaseModel, frozen=True):
    """One round's checks and what the graph decided to do about them."""

    round: int
    coherence: CoherenceVerdict | None
    consistency: ConsistencyVerdict | None
    decision: Decision

    @property
    def accepted(self) -> bool:
        return self.decision == "accept"


class ImageRef(BaseModel, frozen=True):
    sha256: str
    width: int
    height: int
    source: str | None = None


class Trajectory(BaseModel):
    """Everything one graph run did, in order: the unit that traces show and training scores."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    query_id: str
    label_set: str
    images: list[ImageRef] = Field(default_factory=list)
    text: str | None = None
    path: list[str] = Field(default_factory=list)
    calls: list[LLMCall] = Field(default_factory=list)
    perceptions: list[Perception] = Field(default_factory=list)
    reasonings: list[Reasoning] = Field(default_factory=list)
    reflections: list[Reflection] = Field(default_factory=list)
    termination: Termination
    error: str | None = None

    @property
    def corrections(self) -> int:
        """How many times the reflector sent the answer back."""
        return sum(r.decision in ("revise_perception", "revise_reasoning") for r in self.reflections)


class GraphRunError(RuntimeError):
    """Raised by EmotionResult.raise_for_error() for a run that ended in error or timeout."""


class EmotionResult(BaseModel):
    """The answer for one query. `label` is always from the label set unless the run failed (then `error`)."""

    query_id: str
    label: str | None
    label_set: str
    valence: Literal["positive", "negative", "neutral"] | None = None
    arousal: Literal["high", "low"] | None = None
    rationale: str = ""
    format_ok: bool = False
    label_source: Literal["boxed", "closed_set"] | None = None
    coherence: CoherenceVerdict | None = None
    consistency: ConsistencyVerdict | None = None
    termination: Termination
    error: str | None = None
    trajectory: Trajectory | None = None

    @property
    def ok(self) -> bool:
        return self.termination in ("accepted", "max_rounds")

    @property
    def path(self) -> list[str]:
        return self.trajectory.path if self.trajectory else []

    def raise_for_error(self) -> EmotionResult:
        """Return self, or raise GraphRunError if the run did not finish (like httpx's raise_for_status)."""
        if not self.ok:
            raise GraphRunError(f"query {self.query_id}: {self.termination}: {self.error}")
        return self
