"""The compiled graph as a LangGraph user drives it (scripted models): invoke, stream in each mode, astream_events,
batch, mermaid, callbacks, checkpoints that keep the image and warn about nothing, `run` inside a running loop."""

from __future__ import annotations

import asyncio
import base64
import logging
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver
from scripted_otel_runs import PERCEPTION, responder

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from emo_r3.graphs.call_events import CallEvent
from emo_r3.graphs.checkpoints import state_types


def graph(**options) -> EmotionGraph:
    model = ScriptedChatModel(responder(coherence="fear"))  # coherence fails in each round: one correction
    models = dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
    return EmotionGraph.from_config(GraphConfig(max_rounds=1), models=models, **options)


def test_invoke_returns_the_result_with_the_projects_types(noise_image):
    state = graph().graph.invoke({"query": EmotionQuery(id="q", images=[noise_image])})
    result = state["result"]
    assert isinstance(result, EmotionResult) and result.query_id == "q" and result.label == "awe"
    assert result.path == ["perceive", "reason", "reflect", "reason", "reflect", "finalize"]
    assert [c.purpose for c in state["calls"]] == ["perceive", "reason", "coherence", "consistency"] * 1 + [
        "reason", "coherence", "consistency",
    ]  # fmt: skip


def test_json_input_with_a_data_url_or_base64_image(noise_image):
    encoded = base64.b64encode(noise_image.read_bytes()).decode()
    compiled = graph().graph
    for image in (f"data:image/png;base64,{encoded}", encoded):
        result = compiled.invoke({"query": {"id": "j", "images": [image], "text": "at the beach"}})["result"]
        assert result.ok and result.trajectory.images[0].source is None  # no megabytes of base64 as a "path"
    refused = compiled.invoke({"query": {"images": []}})["result"]
    assert refused.termination == "error" and refused.error.startswith("bad input:") and "images" in refused.error


def test_stream_modes_updates_values_and_custom_events_one_per_call_in_order(noise_image):
    compiled = graph().graph
    given = {"query": EmotionQuery(id="s", images=[noise_image])}
    chunks = list(compiled.stream(given, stream_mode=["updates", "values", "custom"]))
    updates = [next(iter(chunk)) for mode, chunk in chunks if mode == "updates"]
    assert updates == ["prepare", "perceive", "reason", "reflect", "reason", "reflect", "finalize"]
    events = [chunk for mode, chunk in chunks if mode == "custom"]
    final = [chunk for mode, chunk in chunks if mode == "values"][-1]
    assert all(isinstance(event, CallEvent) for event in events)
    assert [(e.role, e.purpose, e.round) for e in events] == [(c.role, c.purpose, c.round) for c in final["calls"]]
    assert events[0].text == PERCEPTION and events[0].completion_tokens == len(final["calls"][0].completion_token_ids)
    assert {e.query_id for e in events} == {"s"} and all(e.latency_s >= 0 for e in events)


def test_astream_events_shows_each_node_and_each_llm_call_under_its_node(noise_image):
    compiled = graph().graph

    async def collect():
        return [e async for e in compiled.astream_events({"query": EmotionQuery(images=[noise_image])}, version="v2")]

    events = asyncio.run(collect())
    node_runs = {e["run_id"]: e["name"] for e in events if e["event"] == "on_chain_start"}
    llm_starts = [e for e in events if e["event"] == "on_chat_model_start"]
    llm_ends = [e for e in events if e["event"] == "on_chat_model_end"]
    assert [e["name"] for e in llm_starts] == [
        "perceiver.perceive", "reasoner.reason", "reflector.coherence", "reflector.consistency",
        "reasoner.reason", "reflector.coherence", "reflector.consistency",
    ]  # fmt: skip
    assert len(llm_ends) == len(llm_starts)
    assert [node_runs[e["parent_ids"][-1]] for e in llm_starts][:3] == ["perceive", "reason", "reflect"]
    assert llm_ends[0]["data"]["output"].content == PERCEPTION


class Recorder(AsyncCallbackHandler):
    """What LangSmith's tracer would receive: chat-model runs and their parents."""

    def __init__(self) -> None:
        self.chains: dict[UUID, str] = {}
        self.llm: list[tuple[str, UUID | None, list]] = []
        self.ended: list[dict] = []

    async def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.chains[run_id] = kwargs.get("name") or ""

    async def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        self.llm.append((kwargs["name"], parent_run_id, messages[0]))

    async def on_llm_end(self, response, *, run_id, parent_run_id=None, **kwargs):
        self.ended.append(response.generations[0][0].message.usage_metadata)


def test_llm_calls_are_child_runs_of_their_node_for_callbacks(noise_image):
    recorder = Recorder()
    graph().graph.invoke({"query": EmotionQuery(images=[noise_image])}, config={"callbacks": [recorder]})
    name, parent, messages = recorder.llm[0]
    assert name == "perceiver.perceive" and recorder.chains[parent] == "perceive"
    image_part = messages[0].content[0]["text"]
    assert image_part.startswith("[image ") and "x" in image_part  # by hash and size, never pixels
    assert len(recorder.ended) == len(recorder.llm) == 7 and recorder.ended[0]["output_tokens"] > 0


def test_batch_and_mermaid(noise_image, tmp_path):
    compiled = graph().graph
    states = compiled.batch([{"query": EmotionQuery(id=str(i), images=[noise_image])} for i in range(3)])
    assert [s["result"].query_id for s in states] == ["0", "1", "2"]
    mermaid = compiled.get_graph().draw_mermaid()
    for edge in ("__start__ --> prepare", "reflect -.-> perceive", "reflect -.-> reason", "finalize --> __end__"):
        assert edge in mermaid, mermaid


def test_a_checkpoint_keeps_the_pixels_and_reads_back_only_the_states_types(noise_image, caplog):
    saver = InMemorySaver()
    emotion = graph(checkpointer=saver)
    thread = {"configurable": {"thread_id": "t"}}
    with caplog.at_level(logging.WARNING):
        emotion.graph.invoke({"query": EmotionQuery(images=[noise_image])}, thread, interrupt_after=["perceive"])
        paused = emotion.graph.get_state(thread)
        image = paused.values["prepared"].images[0]
        assert paused.next == ("reason",) and len(image.png_bytes) > 100 and image.to_pil().size == (64, 48)
        result = emotion.graph.invoke(None, thread)["result"]
    assert result.ok and result.path[0] == "perceive"
    assert not [r for r in caplog.records if "unregistered" in r.getMessage()], caplog.text
    assert ("emo_r3.graphs.state", "PreparedQuery") in state_types()


def test_run_works_inside_a_running_event_loop(noise_image):
    async def notebook_cell():  # Jupyter runs cells inside its own loop
        return graph().run(EmotionQuery(images=[noise_image]))

    assert asyncio.run(notebook_cell()).ok


def test_thread_id_resumes_an_unfinished_run_of_the_same_query(noise_image):
    emotion = graph(checkpointer=InMemorySaver())
    query = EmotionQuery(id="r", images=[noise_image])
    thread = {"configurable": {"thread_id": "job-1"}}
    emotion.graph.invoke({"query": query}, thread, interrupt_after=["reason"])
    calls_before = len(emotion.graph.get_state(thread).values["calls"])
    result = emotion.run(query, thread_id="job-1")
    assert result.ok and len(result.trajectory.calls) == 7 and calls_before == 2
    with pytest.raises(ValueError, match="holds an unfinished run of query 'r'"):
        emotion.graph.invoke({"query": query}, {"configurable": {"thread_id": "job-2"}}, interrupt_after=["reason"])
        emotion.run(EmotionQuery(id="other", images=[noise_image]), thread_id="job-2")
    with pytest.raises(ValueError, match="needs a checkpointer"):
        graph().run(query, thread_id="x")
