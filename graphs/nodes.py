"""The graph's nodes: prepare the query; perceive, reason and reflect, each calling one role agent and announcing its
calls; finalize the result. Each reads the state and returns a state update."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.perceiver import Perceiver
from emo_r3.agents.reasoner import Reasoner
from emo_r3.agents.reflector import Reflector
from emo_r3.agents.role_agent import AgentCallError
from emo_r3.graphs.call_events import announce
from emo_r3.graphs.config import Check, ImageConfig
from emo_r3.graphs.outcome import bad_input_result, run_result
from emo_r3.graphs.query_preparation import BAD_INPUT_ERRORS, as_query, prepare_query, query_id_of
from emo_r3.graphs.routing import decide
from emo_r3.graphs.state import GraphState
from emo_r3.graphs.sync_bridge import run_sync
from emo_r3.graphs.trajectory import Reflection
from emo_r3.prompts import LabelSet, render

Update = dict[str, Any]
NodeBody = Callable[[GraphState, RunnableConfig], Awaitable[Update]]


class Node(Runnable[GraphState, Update]):
    """A node whose async body LangGraph's sync API (`invoke`, `stream`, `batch`) can run too. Unlike a
    RunnableLambda it opens no run of its own: the LLM calls it announces are children of the node's run."""

    def __init__(self, name: str, body: NodeBody) -> None:
        self.name = name
        self._body = body

    def invoke(self, input: GraphState, config: RunnableConfig | None = None, **kwargs: Any) -> Update:
        return run_sync(self._body(input, config or {}))

    async def ainvoke(self, input: GraphState, config: RunnableConfig | None = None, **kwargs: Any) -> Update:
        return await self._body(input, config or {})


def _failed(node: str, error: AgentCallError) -> Update:
    return {"calls": [error.call], "error": str(error), "path": [node]}


async def _announced(update: Update, state: GraphState, config: RunnableConfig) -> Update:
    calls: list[LLMCall] = update.get("calls", [])
    await announce(calls, state["prepared"].id, config)
    return update


@dataclass(frozen=True)
class GraphNodes:
    perceiver: Perceiver
    reasoner: Reasoner
    reflector: Reflector
    checks: tuple[Check, ...]
    image: ImageConfig
    label_set: LabelSet  # when the query names none
    max_rounds: int  # when the input sets none

    async def prepare(self, state: GraphState, config: RunnableConfig) -> Update:
        """The query as given → images decoded, label set resolved; nothing to do for a query prepared before."""
        start: Update = {"round": 0, "feedback": None, "error": None, "result": None}
        start["max_rounds"] = state.get("max_rounds", self.max_rounds)
        if state.get("prepared") is not None:
            return start
        try:
            query = as_query(state.get("query"))
            prepared = await asyncio.to_thread(prepare_query, query, self.image, self.label_set)
        except BAD_INPUT_ERRORS as error:
            return start | {"prepared": None, "error": f"bad input: {error}"}
        return start | {"prepared": prepared}

    async def perceive(self, state: GraphState, config: RunnableConfig) -> Update:
        query = state["prepared"]
        try:
            perception, call = await self.perceiver.perceive(
                query.images, context=query.text, feedback=state["feedback"], round=state["round"]
            )
        except AgentCallError as error:
            return await _announced(_failed("perceive", error), state, config)
        update = {"perceptions": [perception], "calls": [call], "path": ["perceive"], "feedback": None}
        return await _announced(update, state, config)

    async def reason(self, state: GraphState, config: RunnableConfig) -> Update:
        query = state["prepared"]
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
            return await _announced(_failed("reason", error), state, config)
        update = {"reasonings": [reasoning], "calls": calls, "path": ["reason"], "feedback": None}
        return await _announced(update, state, config)

    async def reflect(self, state: GraphState, config: RunnableConfig) -> Update:
        return await _announced(await self._reflect(state), state, config)

    async def _reflect(self, state: GraphState) -> Update:
        query, round = state["prepared"], state["round"]
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

    async def finalize(self, state: GraphState, config: RunnableConfig) -> Update:
        if state["prepared"] is None:  # the input was refused
            return {"result": bad_input_result(query_id_of(state.get("query")), self.label_set.name, state["error"])}
        final = state | {"path": [*state["path"], "finalize"]}
        return {"path": ["finalize"], "result": run_result(final)}
