"""Routing as pure functions of the state: where the graph goes after each node, and the loop bound."""

from __future__ import annotations

from typing import Literal

from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict
from emo_r3.graphs.state import GraphState
from emo_r3.graphs.trajectory import Decision

NodeName = Literal["perceive", "reason", "reflect", "finalize"]

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


# Edge functions are declared async although they only read the state: LangGraph runs a sync edge function in a
# thread-pool executor, which costs more than the whole routing decision.


async def after_reflect(state: GraphState) -> NodeName:
    if state["error"]:
        return "finalize"
    return _DECISION_TARGET[state["reflections"][-1].decision]


def unless_error(next_node: NodeName):
    """Edge function: continue to `next_node`, or jump to finalize when the node recorded an error."""

    async def route(state: GraphState) -> NodeName:
        return "finalize" if state["error"] else next_node

    route.__name__ = f"to_{next_node}_unless_error"
    return route


def recursion_limit(max_rounds: int) -> int:
    """LangGraph's step bound for this loop: three nodes per round, plus finalize, plus one step of slack."""
    return 3 * (max_rounds + 1) + 2
