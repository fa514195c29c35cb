"""EmotionGraph: the perceive → reason → reflect (→ correct) state machine and its run/arun/abatch entry points."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.images import ImageError, PreparedImage, prepare_image
from emo_r3.agents.model_specs import ConfigError
from emo_r3.agents.perceiver import Perceiver
from emo_r3.agents.reasoner import Reasoner
from emo_r3.agents.reflector import Reflector
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.nodes import GraphNodes
from emo_r3.graphs.progress import NodeStarted, ProgressCallback
from emo_r3.graphs.recording import RunRecorder
from emo_r3.graphs.role_models import load_role_models
from emo_r3.graphs.routing import after_reflect, recursion_limit, unless_error
from emo_r3.graphs.state import GraphState, PreparedQuery, initial_state
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult, ImageRef, Termination, Trajectory
from emo_r3.prompts import UnknownLabelSetError, get_label_set

QueryLike = EmotionQuery | str | Path
# What `prepare` raises for input it cannot use; `arun` turns these into an error result.
BAD_INPUT_ERRORS = (ImageError, UnknownLabelSetError, ValidationError)


def build_state_graph(nodes: GraphNodes) -> StateGraph:
    """The graph as data: four nodes, one loop back from reflect, errors short-circuit to finalize."""
    graph = StateGraph(GraphState)
    graph.add_node("perceive", nodes.perceive)
    graph.add_node("reason", nodes.reason)
    graph.add_node("reflect", nodes.reflect)
    graph.add_node("finalize", nodes.finalize)
    graph.add_edge(START, "perceive")
    graph.add_conditional_edges("perceive", unless_error("reason"), ["reason", "finalize"])
    graph.add_conditional_edges("reason", unless_error("reflect"), ["reflect", "finalize"])
    graph.add_conditional_edges("reflect", after_reflect, ["perceive", "reason", "finalize"])
    graph.add_edge("finalize", END)
    return graph


class EmotionGraph:
    """Runs queries through the reflective graph. Build with `from_config`, then `run`, `arun` or `abatch`."""

    def __init__(
        self, config: GraphConfig, models: Mapping[Role, ChatModel], *, traces: RunRecorder | None = None
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
        )
        self.state_graph = build_state_graph(nodes)
        self._compiled = self.state_graph.compile()

    @classmethod
    def from_config(
        cls,
        config: GraphConfig | str | Path | dict | None = None,
        *,
        models: Mapping[Role, ChatModel] | None = None,
        cache_dir: Path | None = None,
        traces: RunRecorder | None = None,
    ) -> EmotionGraph:
        """Load the config (YAML path, dict or instance; None = offline defaults) and its models.

        Pass `models` to use ChatModel instances you built yourself instead of the config's `models`, and
        `traces` (e.g. `TraceRecorder(TraceStore("runs/traces.sqlite"))`) to record every run.
        """
        cfg = GraphConfig.load(config)
        models = models if models is not None else load_role_models(cfg, cache_dir=cache_dir)
        return cls(cfg, models, traces=traces)

    async def check_ready(self) -> None:
        """Raise ModelCallError naming the first model (e.g. a vLLM server) that cannot serve calls now."""
        for model in {id(m): m for m in self.models.values()}.values():
            await model.check_ready()

    def run(
        self, query: QueryLike, *, timeout: float | None = None, progress: ProgressCallback | None = None
    ) -> EmotionResult:
        """Synchronous `arun`, for scripts and notebooks without a running event loop."""
        return asyncio.run(self.arun(query, timeout=timeout, progress=progress))

    async def arun(
        self, query: QueryLike, *, timeout: float | None = None, progress: ProgressCallback | None = None
    ) -> EmotionResult:
        """Run one query. Bad input, failed model calls and timeouts come back as results with `error` set.
        `progress` is called as each node starts."""
        query = _as_query(query)
        try:
            prepared = await asyncio.to_thread(self.prepare, query)
        except BAD_INPUT_ERRORS as error:
            result = EmotionResult(
                query_id=query.id,
                label=None,
                label_set=self.label_set.name,
                termination="error",
                error=f"bad input: {error}",
            )
            return await self._record(result, query, ())
        result = await self.arun_prepared(prepared, timeout=timeout, progress=progress)
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
        timeout = timeout or self.config.timeout_s
        latest = initial_state(query, self.config.max_rounds)
        limit = {"recursion_limit": recursion_limit(self.config.max_rounds)}
        modes = ["values", "tasks"] if progress is not None else ["values"]
        try:
            # Streamed state snapshots, so a timeout still leaves every call completed before it.
            async with asyncio.timeout(timeout):
                async for mode, chunk in self._compiled.astream(latest, config=limit, stream_mode=modes):
                    if mode == "values":
                        latest = chunk
                    elif progress is not None and "input" in chunk:  # a task starting (its end carries "result")
                        progress(NodeStarted(query.id, chunk["name"], chunk["input"]["round"]))
        except TimeoutError:
            return _result(latest, timed_out=True, timeout=timeout)
        return _result(latest, timed_out=False, timeout=timeout)

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
        """Decode and normalise the images and resolve the label set; raises ImageError or UnknownLabelSetError."""
        budget = self.config.image
        images = tuple(
            prepare_image(image, max_pixels=budget.max_pixels, max_decode_pixels=budget.max_decode_pixels)
            for image in query.images
        )
        label_set = get_label_set(query.label_set) if query.label_set else self.label_set
        return PreparedQuery(id=query.id, images=images, text=query.text, label_set=label_set)


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


def _result(state: GraphState, *, timed_out: bool, timeout: float | None) -> EmotionResult:
    query = state["query"]
    reflections, reasonings, perceptions = state["reflections"], state["reasonings"], state["perceptions"]
    termination: Termination
    if timed_out:
        termination, error = "timeout", f"the graph run did not finish within {timeout} s"
    elif state["error"]:
        termination, error = "error", state["error"]
    else:
        termination, error = ("accepted" if reflections[-1].accepted else "max_rounds"), None
    trajectory = Trajectory(
        query_id=query.id,
        label_set=query.label_set.name,
        images=[ImageRef(sha256=i.sha256, width=i.width, height=i.height, source=i.source) for i in query.images],
        text=query.text,
        path=state["path"],
        calls=state["calls"],
        perceptions=perceptions,
        reasonings=reasonings,
        reflections=reflections,
        termination=termination,
        error=error,
    )
    reasoning = reasonings[-1] if reasonings else None
    last_reflection = reflections[-1] if reflections else None
    label_set = query.label_set
    return EmotionResult(
        query_id=query.id,
        label=reasoning.label if reasoning else None,
        label_set=label_set.name,
        valence=(reasoning.valence or label_set.valence.get(reasoning.label)) if reasoning else None,
        arousal=(reasoning.arousal or label_set.arousal.get(reasoning.label)) if reasoning else None,
        rationale=" ".join(f"{perceptions[-1].text} {reasoning.feeling}".split()) if reasoning else "",
        format_ok=bool(reasoning and reasoning.format_ok and perceptions[-1].format_ok),
        label_source=reasoning.label_source if reasoning else None,
        coherence=last_reflection.coherence if last_reflection else None,
        consistency=last_reflection.consistency if last_reflection else None,
        termination=termination,
        error=error,
        trajectory=trajectory,
    )
