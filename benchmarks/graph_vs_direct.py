"""Graph runs vs the same LLM calls sent directly, against one real vLLM server started by this script.

N graph runs (default 32) go to the server at concurrency N. The very calls they made (same messages, sampling
and closed sets, taken from the recorded calls) are then sent straight to the server with httpx at the same
concurrency, each run's calls in the order and overlap the graph made them in; request bodies are built before the
clock starts, so "direct" is the least any client could do. A warm-up batch comes first (both sides then see
the same warm prefix cache); repeats alternate which side goes first, and the ratio is the median over adjacent
graph/direct pairs, which share whatever other load the machine carries at the time. Client CPU is shown too:
on a 2-core machine every client cycle is taken from the server.

    ratio = direct_time / graph_time          (target >= 0.9: the graph adds at most ~10 % to a batch)
    throughput: graph runs/s at concurrency 1 vs N (what the server's batching buys)

    .venv/bin/python benchmarks/graph_vs_direct.py [--runs 32] [--repeats 4] [--model offline:tiny-idefics3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from emo_r3.agents.backends.vllm.chat import VLLMChatModel
from emo_r3.agents.backends.vllm.process import VLLMProcess
from emo_r3.agents.call_record import ROLES
from emo_r3.agents.model_specs import resolve_model_dir
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.trajectory import EmotionResult

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "bench"
TARGET_RATIO = 0.9
SAMPLING = {  # greedy: the direct replay then asks for exactly the work the graph did
    "perceiver": {"temperature": 0.0, "max_tokens": 48},
    "reasoner": {"temperature": 0.0, "max_tokens": 96},
    "reflector": {"temperature": 0.0, "max_tokens": 8},
}


def make_graph(base_url: str) -> EmotionGraph:
    spec = {"backend": "vllm", "base_url": base_url, "model": SERVED_NAME}
    roles = {role: {"model": "v", "sampling": SAMPLING[role]} for role in ROLES}
    return EmotionGraph.from_config(GraphConfig(models={"v": spec}, roles=roles, max_rounds=1))


def make_queries(n: int) -> list[EmotionQuery]:
    """Distinct pictures (smooth random colour fields), so no two runs share a prompt."""
    queries = []
    for i in range(n):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((96, 72), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        queries.append(EmotionQuery(id=f"q{i}", images=[buffer.getvalue()], text=f"a moment from day {i}"))
    return queries


@dataclass(frozen=True)
class Timing:
    wall_s: float
    client_cpu_s: float  # this process's CPU: on a small machine it is taken from the server's cores


async def timed(work: Awaitable[object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    await work
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


async def run_graphs(graph: EmotionGraph, queries: list[EmotionQuery], concurrency: int) -> list[EmotionResult]:
    results = await graph.abatch(queries, max_concurrency=concurrency)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} graph runs failed, e.g. {failed[0]}")
    return results


Chain = list[list[bytes]]  # one graph run's calls as steps; the calls of one step were made concurrently


def request_chains(model: VLLMChatModel, results: list[EmotionResult]) -> list[Chain]:
    """Per graph run, the JSON bodies of its calls in the order the graph made them; a round's two reflection
    checks form one step, as the reflect node sends them at once."""
    chains = []
    for result in results:
        chain: Chain = []
        previous: tuple[str, int] | None = None
        for call in result.trajectory.calls:
            body = json.dumps(model.request_body(call.messages, call.sampling, choices=call.choices)).encode()
            step = (call.node, call.round)
            if call.node == "reflect" and step == previous:
                chain[-1].append(body)
            else:
                chain.append([body])
            previous = step
        chains.append(chain)
    return chains


async def run_direct(base_url: str, chains: list[Chain], concurrency: int) -> None:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)  # as VLLMChatModel's pool
    semaphore = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

        async def send(body: bytes) -> None:
            response = await client.post("/v1/chat/completions", content=body, headers=headers)
            response.raise_for_status()
            response.json()  # the graph's backend parses every answer too

        async def run_chain(chain: Chain) -> None:
            async with semaphore:
                for step in chain:
                    await asyncio.gather(*(send(body) for body in step))

        await asyncio.gather(*(run_chain(chain) for chain in chains))


async def benchmark(base_url: str, runs: int, repeats: int, sequential_runs: int) -> None:
    graph = make_graph(base_url)
    queries = make_queries(runs)
    model = graph.models["perceiver"]
    assert isinstance(model, VLLMChatModel)
    warm = await run_graphs(graph, queries, runs)  # warm-up, and the calls the direct side replays
    chains = request_chains(model, warm)
    calls = [c for r in warm for c in r.trajectory.calls]
    print(f"{runs} graph runs per batch: {len(calls)} LLM calls, {sum(c.usage.completion_tokens for c in calls)} "
          "completion tokens")  # fmt: skip
    graph_times: list[Timing] = []
    direct_times: list[Timing] = []
    for repeat in range(repeats):  # alternate which goes first, so drift in the machine's load hits both
        pair = [("graph", run_graphs(graph, queries, runs)), ("direct", run_direct(base_url, chains, runs))]
        for name, work in pair if repeat % 2 == 0 else pair[::-1]:
            (graph_times if name == "graph" else direct_times).append(await timed(work))
    sequential = await timed(run_graphs(graph, queries[:sequential_runs], 1))
    report(runs, graph_times, direct_times, sequential_runs / sequential.wall_s)


def report(runs: int, graph_times: list[Timing], direct_times: list[Timing], sequential_rate: float) -> None:
    """The ratio is the median over adjacent graph/direct pairs, which share the machine's load at the time."""
    for name, times in (("graph ", graph_times), ("direct", direct_times)):
        walls = ", ".join(f"{t.wall_s:.2f}" for t in times)
        cpu = statistics.median(t.client_cpu_s for t in times)
        print(f"{name} batch: median {statistics.median(t.wall_s for t in times):6.2f} s  ({walls})  "
              f"client CPU {cpu:.2f} s")  # fmt: skip
    ratio = statistics.median(d.wall_s / g.wall_s for g, d in zip(graph_times, direct_times, strict=True))
    best = min(t.wall_s for t in direct_times) / min(t.wall_s for t in graph_times)
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"ratio direct/graph: {ratio:.3f} (median of {len(graph_times)} pairs; best/best {best:.3f})  "
          f"target >= {TARGET_RATIO}: {verdict}")  # fmt: skip
    concurrent_rate = runs / statistics.median(t.wall_s for t in graph_times)
    print(
        f"throughput: {sequential_rate:.2f} graph runs/s at concurrency 1, {concurrent_rate:.2f} at {runs} "
        f"({concurrent_rate / sequential_rate:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32, help="graph runs per batch, all at once")
    parser.add_argument("--repeats", type=int, default=4, help="timed graph/direct pairs")
    parser.add_argument("--sequential-runs", type=int, default=8, help="graph runs timed at concurrency 1")
    parser.add_argument("--model", default="offline:tiny-idefics3", help="a served Idefics3 folder or offline:<kind>")
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm" / "bin" / "python")
    args = parser.parse_args()
    model_dir = resolve_model_dir(args.model)
    started = time.perf_counter()
    with VLLMProcess(model_dir, served_name=SERVED_NAME, python=args.vllm_python) as server:
        print(f"vLLM server pid {server.pid} at {server.base_url}, ready in {time.perf_counter() - started:.0f} s")
        asyncio.run(benchmark(server.base_url, args.runs, args.repeats, args.sequential_runs))


if __name__ == "__main__":
    main()
