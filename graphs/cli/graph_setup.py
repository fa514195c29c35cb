"""Turn command-line options into a ready graph and a trace recorder, with clear exits on bad input.

Shared by every `emo-r3` command that runs the graph (run, batch, and the eval/train plugins).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from emo_r3.agents.chat_model import ModelCallError
from emo_r3.agents.model_specs import ConfigError
from emo_r3.graphs.cli.console import err, print_error
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.traces.cli import otel_exporter
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.store import RunSource, TraceStore, TraceStoreError
from emo_r3.prompts import UnknownLabelSetError


def load_graph(
    config: Path | None, label_set: str | None, max_rounds: int | None, traces: TraceRecorder | None
) -> EmotionGraph:
    """The graph of `config` with command-line overrides, its models loaded and servers checked ready."""
    try:
        cfg = GraphConfig.load(config)
        overrides = {"label_set": label_set, "max_rounds": max_rounds}
        cfg = GraphConfig.load(cfg.model_dump() | {k: v for k, v in overrides.items() if v is not None})
        with err.status("loading models (the first run builds the offline models, about a minute)"):
            graph = EmotionGraph.from_config(cfg, traces=traces)
            asyncio.run(graph.check_ready())
            return graph
    except (ConfigError, UnknownLabelSetError, ModelCallError) as error:
        print_error(error)
        raise typer.Exit(2) from error


def recorder(path: Path, disabled: bool, source: RunSource, otlp: str | None) -> TraceRecorder | None:
    """Where runs are recorded: the trace store unless disabled, plus OpenTelemetry when `otlp` is given."""
    if disabled and otlp is None:
        return None
    try:
        store = None if disabled else TraceStore(path)
    except TraceStoreError as error:
        print_error(f"{error} (pass --no-traces to run without recording)")
        raise typer.Exit(2) from error
    return TraceRecorder(store, source=source, exporter=otel_exporter(otlp) if otlp else None)
