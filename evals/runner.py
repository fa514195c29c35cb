"""Run a dataset through the graph (concurrent, resumable, traced) or through one SET prompt (paper parity)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing

from emo_r3.agents.chat_model import ChatMessage, ChatModel, ModelCallError, SamplingParams
from emo_r3.agents.images import ImageError, prepare_image
from emo_r3.agents.parsing import parse_set
from emo_r3.evals.items import EvalItem, LoadedDataset
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.progress import ProgressCallback
from emo_r3.graphs.results_file import ResultsFile
from emo_r3.graphs.trajectory import EmotionQuery
from emo_r3.prompts import get_label_set, render

OnRecord = Callable[[PredictionRecord], None]


def pending_items(dataset: LoadedDataset, results: ResultsFile[PredictionRecord], retry_errors: bool) -> list[EvalItem]:
    return [item for item in dataset.items if not results.done(item.id, retry_errors=retry_errors)]


async def evaluate_graph(
    graph: EmotionGraph,
    items: list[EvalItem],
    results: ResultsFile[PredictionRecord],
    *,
    max_concurrency: int = 4,
    on_record: OnRecord = lambda _record: None,
    progress: ProgressCallback | None = None,
) -> None:
    """Each item through the whole graph; each prediction appended (fsynced) as soon as its run ends. A write error
    (ResultsWriteError) stops the run; every prediction written before it stays."""
    by_id = {item.id: item for item in items}
    queries = [
        EmotionQuery(id=item.id, images=[item.image], text=item.text, label_set=item.label_set) for item in items
    ]
    # aclosing: if a prediction cannot be written (ResultsWriteError), the runs still going are cancelled before
    # the error leaves here, so the eval stops cleanly instead of running items whose results would be lost.
    async with aclosing(graph.astream_batch(queries, max_concurrency=max_concurrency, progress=progress)) as stream:
        async for result in stream:
            record = PredictionRecord.from_result(by_id[result.query_id], result)
            results.append(record)
            on_record(record)


async def evaluate_paper_parity(
    graph: EmotionGraph,
    items: list[EvalItem],
    results: ResultsFile[PredictionRecord],
    *,
    max_concurrency: int = 4,
    on_record: OnRecord = lambda _record: None,
) -> None:
    """EMO-R3's own metric: one SET response per image from the reasoner's model, scored by exact match of
    the lower-cased boxed label (no synonym normalisation, no reflection, no fallback)."""
    model, sampling = graph.models["reasoner"], graph.config.roles["reasoner"].sampling
    semaphore = asyncio.Semaphore(max_concurrency)

    async def one(item: EvalItem) -> None:
        async with semaphore:
            record = await _parity_record(item, model, sampling)
        results.append(record)
        on_record(record)

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # A write error (or a cancel) stops every other item too, and waits for them, so the eval stops cleanly.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _parity_record(item: EvalItem, model: ChatModel, sampling: SamplingParams) -> PredictionRecord:
    label_set = get_label_set(item.label_set)
    base = {"id": item.id, "label": item.label, "label_set": label_set.name}
    try:
        image = await asyncio.to_thread(prepare_image, item.image)
        prompt = render("set_single", labels=label_set.labels)
        completion = await model.chat([ChatMessage.user(prompt, (image,))], sampling)
    except (ImageError, ModelCallError) as error:
        return PredictionRecord(**base, status="error", prediction=None, termination="error", error=str(error))
    parsed = parse_set(completion.text, label_set, truncated=completion.finish_reason == "length")
    boxed = parsed.boxed.strip().lower() if parsed.boxed else None
    return PredictionRecord(
        **base, status="ok", prediction=boxed, first_label=boxed, termination="accepted", format_ok=parsed.format_ok,
        node_latency_s={"set": completion.latency_s}, prompt_tokens=len(completion.prompt_token_ids),
        completion_tokens=len(completion.completion_token_ids),
    )  # fmt: skip
