"""Routing as pure functions of the state: where the graph goes after each node, and the loop bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langchain_core.runnables import Runnable, RunnableConfig

from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict
from emo_r3.graphs.state import GraphState
from emo_r3.graphs.trajectory import Decision

NodeName = Literal["prepare", "perceive", "reason", "reflect", "finalize"]

_DECISION_TARGET: dict[Decision, NodeName] = {
    "accept": "finalize",
    "stop": "finalize",
    "revise_perception": "perceive",
    "revise_reasoning": "reason",
}


def decide(
    coherence: CoherenceVerdict | None, consistency: ConsistencyVerdict | None, *, round: int, max_rounds: int
) -> Decision:
    """Accept when every check passed; otherwise revise while rounds remain, the perception first.

    A perception that does not describe the image makes any reasoning on it moot, so a consistency failure
    sends the graph back to the perceiver even when coherence also failed.
    """
    if (coherence is None or coherence.passed) and (consistency is None or consistency.passed):
        return "accept"
    if round >= max_rounds:
        return "stop"
    if consistency is not None and not consistency.passed:
        return "revise_perception"
    return "revise_reasoning"


class Route(Runnable[GraphState, NodeName]):
    """An edge function LangGraph calls directly under both its sync and async API. (A plain function would run
    in a thread-pool executor under the async API, which costs more than the routing decision itself.)"""

    def __init__(self, name: str, choose: Callable[[GraphState], NodeName]) -> None:
        self.name = name
        self._choose = choose

    def invoke(self, input: GraphState, config: RunnableConfig | None = None, **kwargs: Any) -> NodeName:
        return self._choose(input)

    async def ainvoke(self, input: GraphState, config: RunnableConfig | None = None, **kwargs: Any) -> NodeName:
        return self._choose(input)


def _after_reflect(state: GraphState) -> NodeName:
    if state["error"]:
        return "finalize"
    return _DECISION_TARGET[state["reflections"][-1].decision]


after_reflect = Route("after_reflect", _after_reflect)


def unless_error(next_node: NodeName) -> Route:
    """Edge: continue to `next_node`, or jump to finalize when the node recorded an error."""
    return Route(f"to_{next_node}_unless_error", lambda state: "finalize" if state["error"] else next_node)


def recursion_limit(max_rounds: int) -> int:
    """LangGraph's step bound for this loop: prepare, three nodes per round, finalize, and one step of slack."""
    return 3 * (max_rounds + 1) + 3
