"""`emo-r3 batch INPUT --out results.jsonl`: many queries, one fsynced results line each, resumable."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from emo_r3.graphs.batch import BatchInputError, BatchItem, BatchRecord, BatchSummary, read_batch_items, run_batch
from emo_r3.graphs.cli import options
from emo_r3.graphs.cli.console import data, err, print_error
from emo_r3.graphs.cli.exit_codes import ExitCode
from emo_r3.graphs.cli.graph_setup import graph_config, load_graph, recorder
from emo_r3.graphs.cli.output_paths import OutputPathError, check_output_file
from emo_r3.graphs.cli.progress import LiveProgress
from emo_r3.graphs.cli.third_party_output import quiet_third_party
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.results_file import ResultsFile, ResultsFileError, ResultsWriteError
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
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
    verbose: options.Verbose = False,
) -> None:
    """Run many queries; re-running the same command resumes where it stopped (finished ids are skipped).
    Exits 1 when any item's result is an error (after finishing the others), 3 when results could not be written."""
    quiet_third_party(verbose)
    items, results = _open_inputs(source, results_path)
    with results:  # held until the end: a second `batch` on the same --out is refused, not run twice
        recording = recorder(traces, no_traces, "batch", otlp)
        graph = load_graph(graph_config(config, label_set, max_rounds), recording)
        try:
            summary = _run_with_progress(
                graph,
                items,
                results,
                concurrency=concurrency,
                retry_errors=retry_errors,
                with_trajectory=with_trajectory,
            )
        except ResultsWriteError as error:  # a full disk: stopped cleanly, the file cut back to its last record
            print_error(error)
            raise typer.Exit(ExitCode.STOPPED) from error
        finally:
            if recording is not None:
                recording.close()
    _report(summary, results_path, as_json)
    if recording is not None and recording.failures:
        message = f"{recording.failures} runs were not recorded in the trace store: {recording.last_error}"
        print_error(message, label="warning", style="yellow")
    if summary.failed:
        raise typer.Exit(ExitCode.FAILED)


def _report(summary: BatchSummary, results_path: Path, as_json: bool) -> None:
    duplicates = f", {summary.duplicates} duplicate ids ignored" if summary.duplicates else ""
    before = (
        f" ({summary.errors_before} of them errors: --retry-errors runs those again)" if summary.errors_before else ""
    )
    done = f"{summary.ok} ok, {summary.errors} errors, {summary.skipped} already done{before}{duplicates}"
    err.print(data(f"{done} → {results_path}"))
    if as_json:
        sys.stdout.write(json.dumps(summary.model_dump() | {"results": str(results_path)}) + "\n")


def _open_inputs(source: Path, results_path: Path) -> tuple[list[BatchItem], ResultsFile[BatchRecord]]:
    """The items and the locked results file, or exit 2 with what to fix, before any model is loaded."""
    try:
        check_output_file(results_path)
        items = list(read_batch_items(source))
        return items, ResultsFile(results_path, BatchRecord).lock()
    except (OutputPathError, BatchInputError, ResultsFileError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def _run_with_progress(
    graph: EmotionGraph,
    items: list[BatchItem],
    results: ResultsFile[BatchRecord],
    *,
    concurrency: int,
    retry_errors: bool,
    with_trajectory: bool,
) -> BatchSummary:
    done = sum(results.done(i.id, retry_errors=retry_errors) for i in items)
    with LiveProgress("emo-r3 batch", total=len(items), done=done) as progress:
        run = run_batch(
            graph,
            items,
            results,
            max_concurrency=concurrency,
            retry_errors=retry_errors,
            with_trajectory=with_trajectory,
            on_record=progress.item_done,
            progress=progress.node_started,
        )
        return asyncio.run(run)
