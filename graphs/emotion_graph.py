"""EmotionGraph: the perceive → reason → reflect (→ correct) state machine, compiled as a LangGraph graph (`.graph`:
invoke, stream, astream_events, batch, checkpoints), and the run/arun/abatch entry points that record traces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.images import PreparedImage
from emo_r3.agents.model_specs import ConfigError
from emo_r3.agents.perceiver import Perceiver
from emo_r3.agents.reasoner import Reasoner
from emo_r3.agents.reflector import Reflector
from emo_r3.graphs.checkpoints import durable
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.nodes import GraphNodes, Node
from emo_r3.graphs.outcome import bad_input_result, run_result
from emo_r3.graphs.progress import NodeStarted, ProgressCallback
from emo_r3.graphs.query_preparation import BAD_INPUT_ERRORS, prepare_query
from emo_r3.graphs.recording import RunRecorder
from emo_r3.graphs.role_models import load_role_models
from emo_r3.graphs.routing import after_reflect, recursion_limit, unless_error
from emo_r3.graphs.state import GraphInput, GraphState, PreparedQuery
from emo_r3.graphs.sync_bridge import run_sync
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult
from emo_r3.prompts import get_label_set

QueryLike = EmotionQuery | str | Path
__all__ = ["BAD_INPUT_ERRORS", "EmotionGraph", "build_state_graph"]


def build_state_graph(nodes: GraphNodes) -> StateGraph:
    """The graph as data: prepare, three nodes, one loop back from reflect, errors short-circuit to finalize."""
    graph = StateGraph(GraphState, input_schema=GraphInput)
    for name in ("prepare", "perceive", "reason", "reflect", "finalize"):
        graph.add_node(name, Node(name, getattr(nodes, name)))
    graph.add_edge(START, "prepare")
    graph.add_conditional_edges("prepare", unless_error("perceive"), ["perceive", "finalize"])
    graph.add_conditional_edges("perceive", unless_error("reason"), ["reason", "finalize"])
    graph.add_conditional_edges("reason", unless_error("reflect"), ["reflect", "finalize"])
    graph.add_conditional_edges("reflect", after_reflect, ["perceive", "reason", "finalize"])
    graph.add_edge("finalize", END)
    return graph


class EmotionGraph:
    """The reflective graph with its models. Build with `from_config`; then use the compiled LangGraph graph
    `graph` (`invoke({"query": EmotionQuery(...)})["result"]`, `stream`, `astream_events`, `batch`, ...), or
    `run`/`arun`/`abatch`, which also record traces and apply the config's timeout."""

    def __init__(
        self,
        config: GraphConfig,
        models: Mapping[Role, ChatModel],
        *,
        traces: RunRecorder | None = None,
        checkpointer: BaseCheckpointSaver | None = None,
    ) -> None:
        _check_image_support(config, models)
        self.config = config
        self.traces = traces
        self.models = dict(models)
        self.label_set = get_label_set(config.label_set)
        nodes = GraphNodes(
            perceiver=Perceiver(models["perceiver"], config.roles["perceiver"].sampling),
            reasoner=Reasoner(models["reasoner"], config.roles["reasoner"].sampling),
            reflector=Reflector(models["reflector"], config.roles["reflector"].sampling),
            checks=tuple(config.checks),
            image=config.image,
            label_set=self.label_set,
            max_rounds=config.max_rounds,
        )
        self.state_graph = build_state_graph(nodes)
        self.checkpointer = checkpointer
        self.graph = self.compile(checkpointer)

    @classmethod
    def from_config(
        cls,
        config: GraphConfig | str | Path | dict | None = None,
        *,
        models: Mapping[Role, ChatModel] | None = None,
        cache_dir: Path | None = None,
        traces: RunRecorder | None = None,
        checkpointer: BaseCheckpointSaver | None = None,
    ) -> EmotionGraph:
        """Load the config (YAML path, dict or instance; None = offline defaults) and its models.

        Pass `models` to use ChatModel instances you built yourself instead of the config's `models`,
        `traces` (e.g. `TraceRecorder(TraceStore("runs/traces.sqlite"))`) to record every run, and a LangGraph
        `checkpointer` (e.g. `SqliteSaver`) to make runs with a `thread_id` durable.
        """
        cfg = GraphConfig.load(config)
        models = models if models is not None else load_role_models(cfg, cache_dir=cache_dir)
        return cls(cfg, models, traces=traces, checkpointer=checkpointer)

    def compile(self, checkpointer: BaseCheckpointSaver | None = None, **options: Any) -> CompiledStateGraph:
        """The LangGraph graph compiled (options as `StateGraph.compile`); a checkpointer reads back this state's
        types only (see `checkpoints.durable`)."""
        return self.state_graph.compile(checkpointer=durable(checkpointer), name="emo-r3", **options)

    async def check_ready(self) -> None:
        """Raise ModelCallError naming the first model (e.g. a vLLM server) that cannot serve calls now."""
        for model in {id(m): m for m in self.models.values()}.values():
            await model.check_ready()

    def run(
        self,
        query: QueryLike,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        thread_id: str | None = None,
    ) -> EmotionResult:
        """Synchronous `arun`, for scripts and notebooks (inside a running event loop, it runs on its own loop in a
        worker thread and waits)."""
        return run_sync(self.arun(query, timeout=timeout, progress=progress, thread_id=thread_id))

    async def arun(
        self,
        query: QueryLike,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        thread_id: str | None = None,
    ) -> EmotionResult:
        """Run one query. Bad input, failed model calls and timeouts come back as results with `error` set.
        `progress` is called as each node starts. With a checkpointer, `thread_id` makes the run durable: run again
        with the same thread after a crash, it resumes from the last finished node instead of starting over."""
        query = _as_query(query)
        thread = self._thread(thread_id)
        if thread and await self._unfinished(thread, query.id):
            result, state = await self._stream(None, thread, timeout, progress)
            return await self._record(result, query, state["prepared"].images)
        try:
            prepared = await asyncio.to_thread(self.prepare, query)
        except BAD_INPUT_ERRORS as error:
            result = bad_input_result(query.id, self.label_set.name, f"bad input: {error}")
            return await self._record(result, query, ())
        result, _ = await self._stream({"prepared": prepared}, thread, timeout, progress)
        return await self._record(result, query, prepared.images)

    async def _record(
        self, result: EmotionResult, query: EmotionQuery, images: tuple[PreparedImage, ...]
    ) -> EmotionResult:
        if self.traces is not None:
            await self.traces.record(result, query=query, images=images, config_hash=self.config.fingerprint())
        return result

    async def arun_prepared(
        self, query: PreparedQuery, *, timeout: float | None = None, progress: ProgressCallback | None = None
    ) -> EmotionResult:
        """Run the graph on an already prepared query (images decoded), e.g. when a caller reuses images."""
        result, _ = await self._stream({"prepared": query}, {}, timeout, progress)
        return result

    def _thread(self, thread_id: str | None) -> RunnableConfig:
        if thread_id is None:
            return {}
        if self.checkpointer is None:
            raise ValueError(
                "thread_id needs a checkpointer to keep the run in: "
                "EmotionGraph.from_config(..., checkpointer=SqliteSaver(...))"
            )
        return {"configurable": {"thread_id": thread_id}}

    async def _unfinished(self, thread: RunnableConfig, query_id: str) -> bool:
        """Whether the thread holds a run that stopped part-way (then it must be this query's)."""
        try:
            snapshot = await self.graph.aget_state(thread)
        except NotImplementedError as error:  # a sync-only saver such as SqliteSaver
            raise ValueError(
                f"{type(self.checkpointer).__name__} cannot be used from async code (run/arun): use its async "
                "counterpart (e.g. AsyncSqliteSaver), or drive `graph.graph.invoke(...)` with it"
            ) from error
        if not snapshot.next:
            return False
        held = snapshot.values.get("prepared")
        if held is not None and held.id != query_id:
            raise ValueError(
                f"thread {thread['configurable']['thread_id']!r} holds an unfinished run of query {held.id!r}, not "
                f"{query_id!r}: resume it with that query, or use another thread_id"
            )
        return True

    async def _stream(
        self, given: GraphInput | None, thread: RunnableConfig, timeout: float | None, progress: ProgressCallback | None
    ) -> tuple[EmotionResult, GraphState]:
        """Run (or resume, `given=None`) to the end or the timeout; the result and the last state."""
        timeout = timeout or self.config.timeout_s
        config: RunnableConfig = {**thread, "recursion_limit": recursion_limit(self.config.max_rounds)}
        modes = ["values", "tasks"] if progress is not None else ["values"]
        latest: dict[str, Any] = dict(given or {})
        try:
            # Streamed state snapshots, so a timeout still leaves every call completed before it.
            async with asyncio.timeout(timeout):
                # A durable run's checkpoints are written before each next step (LangGraph's default writes them in
                # the background, which a killed process may not have finished).
                stream = self.graph.astream(given, config, stream_mode=modes, durability="sync" if thread else None)
                async for mode, chunk in stream:
                    if mode == "values":
                        latest = chunk
                    elif progress is not None and "input" in chunk:  # a task starting (its end carries "result")
                        query_id = latest["prepared"].id
                        progress(NodeStarted(query_id, chunk["name"], chunk["input"].get("round", 0)))
        except TimeoutError:
            return run_result(latest, timed_out=True, timeout=timeout), latest
        return latest["result"], latest

    async def astream_batch(
        self, queries: Iterable[QueryLike], *, max_concurrency: int = 4, progress: ProgressCallback | None = None
    ) -> AsyncIterator[EmotionResult]:
        """Yield results as they finish, running at most `max_concurrency` graphs at once."""
        semaphore = _semaphore(max_concurrency)
        tasks = [asyncio.create_task(self._arun_limited(q, semaphore, progress)) for q in queries]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()

    async def abatch(
        self, queries: Iterable[QueryLike], *, max_concurrency: int = 4, progress: ProgressCallback | None = None
    ) -> list[EmotionResult]:
        """Run many queries concurrently; results come back in input order, one per query, errors included."""
        semaphore = _semaphore(max_concurrency)
        return list(await asyncio.gather(*(self._arun_limited(q, semaphore, progress) for q in queries)))

    async def _arun_limited(
        self, query: QueryLike, semaphore: asyncio.Semaphore, progress: ProgressCallback | None
    ) -> EmotionResult:
        async with semaphore:
            return await self.arun(query, progress=progress)

    def prepare(self, query: EmotionQuery) -> PreparedQuery:
        """Decode and normalise the images and resolve the label set; raises one of BAD_INPUT_ERRORS."""
        return prepare_query(query, self.config.image, self.label_set)


def _as_query(query: QueryLike) -> EmotionQuery:
    return query if isinstance(query, EmotionQuery) else EmotionQuery(images=[query])


def _semaphore(max_concurrency: int) -> asyncio.Semaphore:
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    return asyncio.Semaphore(max_concurrency)


def _check_image_support(config: GraphConfig, models: Mapping[Role, ChatModel]) -> None:
    needs_images: list[Role] = ["perceiver"]
    if "consistency" in config.checks:
        needs_images.append("reflector")
    for role in needs_images:
        if not models[role].supports_images:
            raise ConfigError(
                f"the {role} needs an image-text model, but {models[role].model_id!r} is text-only; "
                + ("map it to a vision-language model" if role == "perceiver"
                   else "map it to a vision-language model or drop 'consistency' from `checks`")
            )  # fmt: skip
