"""A trace store filled by real graph runs (tiny model, hostile data, a correction loop, an error, enough filler
runs for a second page) and the viewer serving it from a thread, for the viewer's HTTP and browser tests."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.graphs import EmotionGraph, EmotionQuery, EmotionResult, GraphConfig
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.records import TrainingRowRecord
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.traces.viewer.server import make_server
from emo_r3.graphs.traces.viewer.views import PAGE_SIZE

HOSTILE_TEXT = (
    '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> **bold** [link](http://example.com)'
)
HOSTILE_ANSWER = (
    '<script>window.__pwned=3</script><img src=x onerror="window.__pwned=4">'
    "<step2>Tiny people under a <b>vast</b> sky feel awed.</step2><step3>valence: positive; arousal: low</step3>"
    " \\boxed{awe}"
)
FILLER_RUNS = PAGE_SIZE + 8  # enough for a second page
ROLES = ("perceiver", "reasoner", "reflector")


def tiny_graph_config(**max_tokens: int) -> GraphConfig:
    sampling = {role: {"sampling": {"temperature": 0, "max_tokens": max_tokens.get(role, 16)}} for role in ROLES}
    return GraphConfig(models={"default": {"path": "offline:tiny-idefics3"}}, roles=sampling)


@dataclass(frozen=True)
class Traces:
    path: Path
    hostile_text_run: str  # real tiny model, hostile user text
    hostile_answer_run: str  # real perceiver, scripted hostile reasoner, scripted reflector forcing one correction
    error_run: str  # corrupt image
    real_runs: list[str]
    thumbnail_sha: str


def filler_answer(messages, sampling, choices) -> str:
    if choices == ["yes", "no"]:
        return "yes"
    if choices:
        return "contentment"
    if "<step2>" in messages[-1].text:
        return "<step2>Calm.</step2><step3>valence: positive; arousal: low</step3> \\boxed{contentment}"
    return "<step1>A rocket on a launch pad.</step1>"


def hostile_reasoner(messages, sampling, choices) -> str:
    return "awe" if choices else HOSTILE_ANSWER


def correcting_reflector() -> ScriptedChatModel:
    """Fails coherence once (implies fear for an awe answer), then agrees: exactly one correction loop."""
    coherence = itertools.chain(["fear"], itertools.repeat("awe"))
    return ScriptedChatModel(lambda messages, sampling, choices: "yes" if choices == ["yes", "no"] else next(coherence))


def run_id(result: EmotionResult, store: TraceStore) -> str:
    if result.trajectory is not None:
        return result.trajectory.id
    return next(s.id for s in store.list_runs(limit=500) if s.query_id == result.query_id)


def fill_traces(folder: Path, bundled_images: dict[str, Path], model_cache: Path) -> Traces:
    """Write `folder/traces.sqlite`: filler runs, real tiny-model runs, a hostile correction loop, rewards, a step."""
    path = folder / "traces.sqlite"
    store = TraceStore(path)
    scripted = dict.fromkeys(ROLES, ScriptedChatModel(filler_answer))
    filler = EmotionGraph(GraphConfig(), scripted, traces=TraceRecorder(store, source="batch"))
    asyncio.run(filler.abatch([bundled_images["rocket"]] * FILLER_RUNS, max_concurrency=8))

    graph = EmotionGraph.from_config(tiny_graph_config(), cache_dir=model_cache, traces=TraceRecorder(store))
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    queries = [
        EmotionQuery(images=[bundled_images["astronaut"]], text=HOSTILE_TEXT),
        EmotionQuery(images=[bundled_images["coffee"]]),
        EmotionQuery(images=[bundled_images["chelsea"]], text="my cat at home"),
        EmotionQuery(images=[corrupt]),
    ]
    results = [graph.run(query) for query in queries]
    models = {"perceiver": graph.models["perceiver"], "reasoner": ScriptedChatModel(hostile_reasoner),
              "reflector": correcting_reflector()}  # fmt: skip
    hostile_graph = EmotionGraph(tiny_graph_config(reasoner=512), models, traces=TraceRecorder(store))
    hostile = hostile_graph.run(EmotionQuery(images=[bundled_images["grace_hopper"]], text="a portrait"))

    ids = [run_id(result, store) for result in [*results, hostile]]
    store.record_rewards(ids[-1], {"accuracy": 1.0, "format": 0.0})
    store.record_rewards(ids[-1], {"verdicts_right": 0.5}, role="reflector")
    store.record_training_step(
        "grpo-smoke", 3, {"loss": 0.125, "kl": 0.01, "reward_mean": 0.5},
        [TrainingRowRecord(run_id=ids[0], call_idx=1, policy="reasoner", advantage=0.75, values={"ratio": 1.0})],
    )  # fmt: skip
    store.close()
    assert hostile.path == ["perceive", "reason", "reflect", "reason", "reflect", "finalize"], hostile.path
    assert results[3].termination == "error"
    return Traces(path, ids[0], ids[-1], ids[3], ids, hostile.trajectory.images[0].sha256)


@contextmanager
def running_viewer(store_path: Path) -> Iterator[str]:
    """The viewer on a free loopback port, served from a daemon thread; yields its base URL."""
    server = make_server(store_path, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str


def request(base: str, path: str, method: str = "GET") -> Answer:
    """Raw http.client, so odd methods and odd paths go out exactly as written."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read().decode(errors="replace"))
    finally:
        connection.close()


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, bundled_images: dict[str, Path], model_cache: Path) -> Traces:
    return fill_traces(tmp_path_factory.mktemp("viewer"), bundled_images, model_cache)


@pytest.fixture(scope="module")
def viewer(traces: Traces) -> Iterator[str]:
    with running_viewer(traces.path) as url:
        yield url
