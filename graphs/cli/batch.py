"""`emo-r3 batch INPUT --out results.jsonl`: many queries, one fsynced results line each, resumable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from emo_r3.graphs.batch import BatchInputError, BatchRecord, read_batch_items, run_batch
from emo_r3.graphs.cli import options
from emo_r3.graphs.cli.console import err, print_error
from emo_r3.graphs.cli.graph_setup import load_graph, recorder
from emo_r3.graphs.results_file import ResultsFile, ResultsFileError
from emo_r3.graphs.traces.store import DEFAULT_TRACE_PATH

batch_app = typer.Typer(add_completion=False)


@batch_app.command()
def batch(
    source: Annotated[Path, typer.Argument(help="a folder of images, or a JSONL file of queries")],
    results_path: Annotated[Path, typer.Option("--out", "-o", help="results JSONL (appended; resumable)")],
    config: options.Config = None,
    label_set: options.LabelSet = None,
    max_rounds: options.MaxRounds = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", min=1, help="graph runs at once")] = 4,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="run items that failed before again")] = False,
    with_trajectory: Annotated[bool, typer.Option("--with-trajectory", help="store full trajectories")] = False,
    traces: options.Traces = DEFAULT_TRACE_PATH,
    no_traces: options.NoTraces = False,
    otlp: options.Otlp = None,
) -> None:
    """Run many queries; re-running the same command resumes where it stopped (finished ids are skipped)."""
    try:
        items = list(read_batch_items(source))
        results = ResultsFile(results_path, BatchRecord)
    except (BatchInputError, ResultsFileError) as error:
        print_error(error)
        raise typer.Exit(2) from error
    graph = load_graph(config, label_set, max_rounds, recorder(traces, no_traces, "batch", otlp))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}", markup=False),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("emo-r3 batch", total=len(items), status="")
        progress.update(task, advance=sum(results.done(i.id, retry_errors=retry_errors) for i in items))

        def on_record(record: BatchRecord) -> None:
            progress.update(task, advance=1, status=f"last: {record.id} → {record.label or record.status}")
            if record.status == "error":
                progress.console.print(Text.assemble((record.id, "yellow"), f": {record.error}"))

        summary = asyncio.run(
            run_batch(
                graph,
                items,
                results,
                max_concurrency=concurrency,
                retry_errors=retry_errors,
                with_trajectory=with_trajectory,
                on_record=on_record,
            )
        )
    if graph.traces is not None:
        graph.traces.close()
    duplicates = f", {summary.duplicates} duplicate ids ignored" if summary.duplicates else ""
    done = f"{summary.ok} ok, {summary.errors} errors, {summary.skipped} already done{duplicates}"
    err.print(Text(f"{done} → {results_path}"))
