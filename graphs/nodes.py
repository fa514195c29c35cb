"""The graph's nodes: each reads the state, calls one role agent, and returns a state update."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from emo_r3.agents.perceiver import Perceiver
from emo_r3.agents.reasoner import Reasoner
from emo_r3.agents.reflector import Reflector
from emo_r3.agents.role_agent import AgentCallError
from emo_r3.graphs.config import Check
from emo_r3.graphs.routing import decide
from emo_r3.graphs.state import GraphState
from emo_r3.graphs.trajectory import Reflection
from emo_r3.prompts import render

Update = dict[str, Any]


def _failed(node: str, error: AgentCallError) -> Update:
    return {"calls": [error.call], "error": str(error), "path": [node]}


@dataclass(frozen=True)
class GraphNodes:
    perceiver: Perceiver
    reasoner: Reasoner
    reflector: Reflector
    checks: tuple[Check, ...]

    async def perceive(self, state: GraphState) -> Update:
        query = state["query"]
        try:
            perception, call = await self.perceiver.perceive(
                query.images, context=query.text, feedback=state["feedback"], round=state["round"]
            )
        except AgentCallError as error:
            return _failed("perceive", error)
        return {"perceptions": [perception], "calls": [call], "path": ["perceive"], "feedback": None}

    async def reason(self, state: GraphState) -> Update:
        query = state["query"]
        previous = state["reasonings"][-1].label if state["reasonings"] else None
        try:
            reasoning, calls = await self.reasoner.reason(
                query.images,
                context=query.text,
                perception=state["perceptions"][-1].text,
                label_set=query.label_set,
                feedback=state["feedback"],
                previous_label=previous,
                round=state["round"],
            )
        except AgentCallError as error:
            return _failed("reason", error)
        return {"reasonings": [reasoning], "calls": calls, "path": ["reason"], "feedback": None}

    async def reflect(self, state: GraphState) -> Update:
        query, round = state["query"], state["round"]
        perception, reasoning = state["perceptions"][-1], state["reasonings"][-1]
        pending = {}
        if "coherence" in self.checks:
            pending["coherence"] = self.reflector.check_coherence(
                perception=perception.text,
                feeling=reasoning.feeling,
                answered_label=reasoning.label,
                label_set=query.label_set,
                round=round,
            )
        if "consistency" in self.checks:
            pending["consistency"] = self.reflector.check_consistency(
                query.images, perception=perception.text, round=round
            )
        # Both checks run concurrently; one failing must not lose the other's recorded call.
        outcomes = dict(zip(pending, await asyncio.gather(*pending.values(), return_exceptions=True), strict=True))
        for outcome in outcomes.values():
            if isinstance(outcome, BaseException) and not isinstance(outcome, AgentCallError):
                raise outcome
        calls = [o.call if isinstance(o, AgentCallError) else o[1] for o in outcomes.values()]
        failures = [str(o) for o in outcomes.values() if isinstance(o, AgentCallError)]
        if failures:
            return {"calls": calls, "error": "; ".join(failures), "path": ["reflect"]}
        coherence = outcomes["coherence"][0] if "coherence" in outcomes else None
        consistency = outcomes["consistency"][0] if "consistency" in outcomes else None
        decision = decide(coherence, consistency, round=round, max_rounds=state["max_rounds"])
        update: Update = {
            "reflections": [Reflection(round=round, coherence=coherence, consistency=consistency, decision=decision)],
            "calls": calls,
            "path": ["reflect"],
        }
        if decision == "revise_perception":
            update |= {"round": round + 1, "feedback": render("correction", check="consistency")}
        elif decision == "revise_reasoning":
            feedback = render(
                "correction",
                check="coherence",
                implied_label=coherence.implied_label,
                answered_label=coherence.answered_label,
            )
            update |= {"round": round + 1, "feedback": feedback}
        return update

    async def finalize(self, state: GraphState) -> Update:
        return {"path": ["finalize"]}
