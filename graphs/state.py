"""The graph's typed state: what routing needs plus append-only logs of what every node produced."""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

from pydantic import BaseModel

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.perceiver import Perception
from emo_r3.agents.reasoner import Reasoning
from emo_r3.graphs.trajectory import Reflection
from emo_r3.prompts import LabelSet


class PreparedQuery(BaseModel, frozen=True):
    """A validated query: images decoded and normalised, label set resolved."""

    id: str
    images: tuple[PreparedImage, ...]
    text: str | None
    label_set: LabelSet


class GraphState(TypedDict):
    query: PreparedQuery
    max_rounds: int
    round: int  # 0 for the first pass, +1 for every correction the reflector asks for
    feedback: str | None  # the reflector's message for the node it routes back to
    error: str | None
    perceptions: Annotated[list[Perception], operator.add]
    reasonings: Annotated[list[Reasoning], operator.add]
    reflections: Annotated[list[Reflection], operator.add]
    calls: Annotated[list[LLMCall], operator.add]
    path: Annotated[list[str], operator.add]


def initial_state(query: PreparedQuery, max_rounds: int) -> GraphState:
    return GraphState(
        query=query,
        max_rounds=max_rounds,
        round=0,
        feedback=None,
        error=None,
        perceptions=[],
        reasonings=[],
        reflections=[],
        calls=[],
        path=[],
    )
