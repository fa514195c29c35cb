"""The graph's typed state: the query as given, what routing needs, append-only logs of what every node produced, and
the result.

Everything in it survives a LangGraph checkpointer: the prepared query carries its images' pixels (as the PNG bytes
the models are given), every other value is a pydantic model of plain data (see `checkpoints.py`).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired, TypedDict

from pydantic import BaseModel, field_serializer, field_validator

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.perceiver import Perception
from emo_r3.agents.reasoner import Reasoning
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult, Reflection
from emo_r3.prompts import LabelSet


class PreparedQuery(BaseModel, frozen=True):
    """A validated query: images decoded and normalised, label set resolved. Dumps with its pixels."""

    id: str
    images: tuple[PreparedImage, ...]
    text: str | None
    label_set: LabelSet

    @field_serializer("images")
    def _with_pixels(self, images: tuple[PreparedImage, ...]) -> list[dict[str, Any]]:
        return [{"png": image.png_bytes, "source": image.source} for image in images]

    @field_validator("images", mode="before")
    @classmethod
    def _from_pixels(cls, images: Any) -> Any:
        return tuple(
            PreparedImage.from_png(image["png"], source=image.get("source"))
            if isinstance(image, dict) and "png" in image
            else image
            for image in images
        )


class GraphInput(TypedDict):
    """What a caller gives the compiled graph: the query (an EmotionQuery, or its JSON from a server), or one
    prepared before (e.g. by a trainer that reuses decoded images across samples)."""

    query: NotRequired[EmotionQuery | dict[str, Any]]
    prepared: NotRequired[PreparedQuery]
    max_rounds: NotRequired[int]  # corrections allowed; the config's when absent


class GraphState(TypedDict):
    query: EmotionQuery | dict[str, Any] | None
    prepared: PreparedQuery | None
    max_rounds: int
    round: int  # 0 for the first pass, +1 for every correction the reflector asks for
    feedback: str | None  # the reflector's message for the node it routes back to
    error: str | None
    perceptions: Annotated[list[Perception], operator.add]
    reasonings: Annotated[list[Reasoning], operator.add]
    reflections: Annotated[list[Reflection], operator.add]
    calls: Annotated[list[LLMCall], operator.add]
    path: Annotated[list[str], operator.add]
    result: EmotionResult | None  # set by finalize
