"""Graph runs with a scripted model that record into a trace store, importable by child processes.

Lives outside the test module on purpose: a spawned writer process must import its target by a module name that
resolves on its own, and `tests.<module>` can collide with other installed `tests` packages (OpenRLHF ships one).
"""

from __future__ import annotations

import asyncio

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.store import TraceStore

SET_ANSWER = "<step2>Calm and warm.</step2><step3>valence: positive; arousal: low</step3> \\boxed{contentment}"


def respond(messages, sampling, choices):
    text = messages[-1].text
    if choices == ["yes", "no"]:
        return "yes"
    if choices:
        return "fear" if "storm" in text else "contentment"
    if "<step2>" in text:
        return SET_ANSWER
    return "<step1>A storm over the sea.</step1>" if "storm" in text else "<step1>A cup of coffee on a table.</step1>"


def scripted_graph(store: TraceStore, **config) -> EmotionGraph:
    model = ScriptedChatModel(respond)
    return EmotionGraph.from_config(
        GraphConfig(**config), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model),
        traces=TraceRecorder(store),
    )  # fmt: skip


def write_runs(path: str, image: str, count: int) -> None:
    """One writer process: `count` concurrent graph runs into the store at `path`."""
    store = TraceStore(path)
    graph = scripted_graph(store)
    asyncio.run(graph.abatch([EmotionQuery(images=[image]) for _ in range(count)], max_concurrency=4))
