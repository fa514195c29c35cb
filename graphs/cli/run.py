"""`emo-r3 run IMAGE...`: one query through the graph, its answer and how the graph got there."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from emo_r3.agents.images import prepare_image
from emo_r3.graphs.cli import options
from emo_r3.graphs.cli.console import data, err, out, print_error
from emo_r3.graphs.cli.exit_codes import ExitCode
from emo_r3.graphs.cli.graph_setup import graph_config, load_graph, recorder
from emo_r3.graphs.cli.progress import LiveProgress
from emo_r3.graphs.cli.third_party_output import quiet_third_party
from emo_r3.graphs.config import GraphConfig
from emo_r3.graphs.traces.store import DEFAULT_TRACE_PATH
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult

run_app = typer.Typer(add_completion=False)


@run_app.command()
def run(
    images: Annotated[list[Path], typer.Argument(help="image file(s) of one query")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="optional context for the image")] = None,
    config: options.Config = None,
    label_set: options.LabelSet = None,
    max_rounds: options.MaxRounds = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full result with its trajectory")] = False,
    traces: options.Traces = DEFAULT_TRACE_PATH,
    no_traces: options.NoTraces = False,
    otlp: options.Otlp = None,
    verbose: options.Verbose = False,
) -> None:
    """Recognise the emotion one image evokes, and show how the graph got there."""
    quiet_third_party(verbose)
    cfg = graph_config(config, label_set, max_rounds)
    query = _checked_query(images, text, cfg)
    recording = recorder(traces, no_traces, "run", otlp)
    graph = load_graph(cfg, recording)
    with LiveProgress("emo-r3 run") as progress:
        result = graph.run(query, progress=progress.node_started)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        print_result(result)
    if recording is not None:
        recording.close()
        if recording.store is not None and result.trajectory is not None:
            if recording.failures:
                print_error(f"the trace was not recorded: {recording.last_error}", label="warning", style="yellow")
            else:
                err.print(data(f"trace: emo-r3 traces show {result.trajectory.id[:12]} --traces {traces}"))
    if not result.ok:
        raise typer.Exit(ExitCode.FAILED)


def _checked_query(images: list[Path], text: str | None, config: GraphConfig) -> EmotionQuery:
    """The query, its images decoded once as the graph will, or exit 2 before any model loads."""
    try:
        for image in images:
            prepare_image(image, max_pixels=config.image.max_pixels, max_decode_pixels=config.image.max_decode_pixels)
        return EmotionQuery(images=list(images), text=text)
    except ValueError as error:  # ImageError, or a query pydantic rejects (e.g. too much text)
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def print_result(result: EmotionResult) -> None:
    """The answer as a person reads it: label, affect, rationale, the reflector's verdicts and the path."""
    if result.label is None:
        err.print(Text.assemble(("failed", "red"), data(f" ({result.termination}): {result.error}")))
        return
    field = _field
    out.print(field("emotion", f"{result.label}  ({result.label_set})"))
    out.print(field("valence", f"{result.valence or '?'}   arousal {result.arousal or '?'}"))
    out.print(field("rationale", result.rationale or "(none)"))
    if result.coherence:
        implied = result.coherence.implied_label or "none"
        out.print(field("coherence", f"{'pass' if result.coherence.passed else 'fail'} (text implies {implied})"))
    if result.consistency:
        status = "pass" if result.consistency.passed else "fail"
        answer = result.consistency.answer or "nothing usable"
        out.print(field("consistency", f"{status} (reflector said {answer})"))
    labels = {"finalize": result.termination if result.termination != "accepted" else "accept"}
    out.print(field("path", " → ".join(labels.get(node, node) for node in result.path)))
    if not result.format_ok:
        out.print(field("note", "the answer did not follow the SET format; see --json for the calls", "yellow"))
    if result.error:
        print_error(result.error)


def _field(name: str, value: str, style: str = "bold") -> Text:
    """One `name  value` line; the value is data, printed as it is (never read as markup)."""
    return Text.assemble((f"{name:<10}", style), " ", data(value))
