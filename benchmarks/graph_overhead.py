"""Per-run orchestration overhead of the graph (LangGraph + agents + prompt rendering + parsing), model excluded.

A zero-latency scripted model answers every call, so what is timed is everything EMO-R3 adds around the
model. Baseline in the same process: the same four model calls awaited directly, with no graph around them.
Target (issue 2): p50 ≤ 2 ms per graph run.

    python benchmarks/graph_overhead.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import ChatMessage, SamplingParams
from emo_r3.agents.images import prepare_image
from emo_r3.graphs import EmotionGraph, GraphConfig
from emo_r3.graphs.state import PreparedQuery
from emo_r3.prompts import MIKELS_8

SET_ANSWER = (
    "<step2>Someone seeing this would feel small and amazed by the scale.</step2>"
    "<step3>valence: positive; arousal: low</step3> \\boxed{awe}"
)


def respond(messages: list[ChatMessage], sampling: SamplingParams, choices: list[str] | None) -> str:
    if choices == ["yes", "no"]:
        return "yes"
    if choices:
        return "awe"
    return SET_ANSWER if "<step2>" in messages[-1].text else "<step1>A vast mountain range at dawn.</step1>"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def time_graph(graph: EmotionGraph, query: PreparedQuery, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await graph.arun_prepared(query)
        samples.append(time.perf_counter() - start)
    return samples


async def time_direct(model: ScriptedChatModel, query: PreparedQuery, runs: int) -> list[float]:
    sampling = SamplingParams()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await model.chat([ChatMessage.user("describe", query.images)], sampling)
        await model.chat([ChatMessage.user("<step2> reason", query.images)], sampling)
        await model.chat([ChatMessage.user("which label")], sampling, choices=list(MIKELS_8.labels))
        await model.chat([ChatMessage.user("does it match", query.images)], sampling, choices=["yes", "no"])
        samples.append(time.perf_counter() - start)
    return samples


async def main(runs: int) -> None:
    model = ScriptedChatModel(respond)
    graph = EmotionGraph.from_config(GraphConfig(), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model))
    image = prepare_image(_png())
    query = PreparedQuery(id="bench", images=(image,), text="a holiday photo", label_set=MIKELS_8)
    await time_graph(graph, query, 50)  # warm-up: imports, template compilation, LangGraph caches
    direct = await time_direct(model, query, runs)
    full = await time_graph(graph, query, runs)
    d50, d99 = percentiles(direct)
    g50, g99 = percentiles(full)
    print(f"runs: {runs} (4 model calls each, zero-latency scripted model)")
    print(f"direct model calls : p50 {d50 * 1e3:7.3f} ms   p99 {d99 * 1e3:7.3f} ms")
    print(f"graph run          : p50 {g50 * 1e3:7.3f} ms   p99 {g99 * 1e3:7.3f} ms")
    print(f"overhead per run   : p50 {(g50 - d50) * 1e3:7.3f} ms   (graph/direct p50 ratio {g50 / d50:.1f}x)")
    print(f"target p50 <= 2 ms : {'met' if g50 <= 2e-3 else 'NOT met'}")


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    asyncio.run(main(parser.parse_args().runs))
