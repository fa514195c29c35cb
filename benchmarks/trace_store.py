"""Trace store throughput: LLM-call records written per second, and list-page latency over 10,000 runs.

Targets (issue 4): >= 5,000 call records/s; a list page over 10,000 runs in < 0.5 s.
Baseline in the same process: the same records appended as JSON lines to a file (what a store-less tool does).

    python benchmarks/trace_store.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import ChatMessage, SamplingParams
from emo_r3.agents.images import PreparedImage, prepare_image
from emo_r3.graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from emo_r3.graphs.traces.records import RunFilter
from emo_r3.graphs.traces.store import TraceStore

# Realistic sizes: ~100-token perceptions and reasonings, one-word verdicts; prompts of several hundred tokens.
PERCEPTION = "<step1>" + "A crowded street market at dusk with lanterns and smiling vendors. " * 7 + "</step1>"
REASONING = (
    "<step2>" + "A viewer would feel warm and lively, drawn into the bustle. " * 7 + "</step2>"
    "<step3>valence: positive; arousal: high</step3> \\boxed{excitement}"
)


def respond(messages: list[ChatMessage], sampling: SamplingParams, choices: list[str] | None) -> str:
    if choices == ["yes", "no"]:
        return "yes"
    if choices:
        return "excitement"
    return REASONING if "<step2>" in messages[-1].text else PERCEPTION


def sample_result(image_path: Path) -> EmotionResult:
    model = ScriptedChatModel(respond)
    graph = EmotionGraph.from_config(GraphConfig(), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model))
    return asyncio.run(graph.arun(EmotionQuery(images=[image_path], text="street market")))


def with_new_id(result: EmotionResult) -> EmotionResult:
    trajectory = result.trajectory.model_copy(update={"id": uuid.uuid4().hex})
    return result.model_copy(update={"trajectory": trajectory})


def _distinct_image(seed: int) -> PreparedImage:
    from PIL import Image

    return prepare_image(Image.new("RGB", (320, 240), (seed % 256, seed // 256 % 256, 90)))


def main(runs: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="emo-r3-bench-"))
    from PIL import Image

    Image.new("RGB", (320, 240), (200, 120, 40)).save(folder / "market.png")
    image = prepare_image(folder / "market.png")
    result = sample_result(folder / "market.png")
    calls_per_run = len(result.trajectory.calls)
    tokens = sum(len(c.prompt_token_ids) + len(c.completion_token_ids) for c in result.trajectory.calls)
    copies = [with_new_id(result) for _ in range(runs)]

    start = time.perf_counter()
    with (folder / "baseline.jsonl").open("w") as sink:
        for copy in copies:
            sink.write(copy.model_dump_json() + "\n")
    baseline_s = time.perf_counter() - start

    store = TraceStore(folder / "traces.sqlite")
    start = time.perf_counter()
    for copy in copies:
        store.record_run(copy, source="batch", images=(image,), input_ref="market.png")
    store_s = time.perf_counter() - start
    calls = runs * calls_per_run
    print(f"runs: {runs}, {calls_per_run} calls/run, {tokens} tokens/run (token ids + logprobs stored per call)")
    print(f"JSONL baseline  : {calls / baseline_s:10,.0f} call records/s")
    print(
        f"trace store     : {calls / store_s:10,.0f} call records/s   ({store_s / baseline_s:.2f}x the baseline's time)"
    )
    print(f"target >= 5,000 call records/s: {'met' if calls / store_s >= 5000 else 'NOT met'}")
    fresh = TraceStore(folder / "distinct.sqlite")
    distinct = [_distinct_image(i) for i in range(min(runs, 1000))]
    start = time.perf_counter()
    for copy, picture in zip(copies, distinct, strict=False):
        fresh.record_run(copy, source="batch", images=(picture,))
    distinct_s = time.perf_counter() - start
    print(f"with a new 320x240 image per run (thumbnail each): {len(distinct) * calls_per_run / distinct_s:,.0f} "
          f"call records/s over {len(distinct)} runs")  # fmt: skip

    reader = TraceStore(folder / "traces.sqlite", readonly=True)
    for name, where in (("newest page", None), ("filtered page", RunFilter(label="excitement", status="ok"))):
        start = time.perf_counter()
        for _ in range(20):
            reader.count_runs(where)
            reader.list_runs(where, limit=50, offset=0)
        page_s = (time.perf_counter() - start) / 20
        print(f"{name:14}  : {page_s * 1e3:8.2f} ms (count + 50 rows over {runs:,} runs; target < 500 ms)")
    start = time.perf_counter()
    reader.list_runs(limit=50, offset=runs - 50)
    print(f"last page      : {(time.perf_counter() - start) * 1e3:8.2f} ms")
    start = time.perf_counter()
    reader.get_run(copies[runs // 2].trajectory.id)
    print(f"one run + calls: {(time.perf_counter() - start) * 1e3:8.2f} ms")
    print(f"file size      : {(folder / 'traces.sqlite').stat().st_size / 1e6:.1f} MB "
          f"(+ WAL), JSONL {(folder / 'baseline.jsonl').stat().st_size / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    main(parser.parse_args().runs)
