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
from emo_r3.graphs.cli.exit_codes import ExitCode
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.traces.cli import otel_exporter
from emo_r3.graphs.traces.recorder import TraceRecorder
from emo_r3.graphs.traces.store import RunSource, TraceStore, TraceStoreError
from emo_r3.prompts import UnknownLabelSetError


def graph_config(config: Path | None, label_set: str | None, max_rounds: int | None) -> GraphConfig:
    """The config of `config` with command-line overrides applied, or exit 2 saying what is wrong with it."""
    try:
        cfg = GraphConfig.load(config)
        overrides = {"label_set": label_set, "max_rounds": max_rounds}
        return GraphConfig.load(cfg.model_dump() | {k: v for k, v in overrides.items() if v is not None})
    except (ConfigError, UnknownLabelSetError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def load_graph(config: GraphConfig, traces: TraceRecorder | None) -> EmotionGraph:
    """The graph of `config`, its models loaded and servers checked ready."""
    try:
        with err.status("loading models (the first run builds the offline models, about a minute)"):
            graph = EmotionGraph.from_config(config, traces=traces)
            asyncio.run(graph.check_ready())
            return graph
    except (ConfigError, ModelCallError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def recorder(path: Path, disabled: bool, source: RunSource, otlp: str | None) -> TraceRecorder | None:
    """Where runs are recorded: the trace store unless disabled, plus OpenTelemetry when `otlp` or the standard
    OTEL_EXPORTER_OTLP_* variables ask for it (see emo_r3.graphs.traces.otel)."""
    try:
        store = None if disabled else TraceStore(path)
    except TraceStoreError as error:
        print_error(f"{error} (pass --no-traces to run without recording)")
        raise typer.Exit(ExitCode.USAGE) from error
    exporter = otel_exporter(otlp)
    if store is None and exporter is None:
        return None
    return TraceRecorder(store, source=source, exporter=exporter)
