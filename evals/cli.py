"""`emo-r3 eval`: run a standard dataset through the graph and report; `emo-r3 eval compare A B`.

`emo-r3 --help` loads this module to list the command, so it imports only what declaring the command needs; the
graph, the datasets and the report plots (matplotlib) load inside the commands.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from emo_r3.graphs.cli import options
from emo_r3.graphs.cli.console import data, err, out, print_error
from emo_r3.graphs.cli.exit_codes import ExitCode
from emo_r3.graphs.cli.third_party_output import quiet_third_party
from emo_r3.graphs.traces.store import DEFAULT_TRACE_PATH

if TYPE_CHECKING:
    from emo_r3.evals.items import LoadedDataset
    from emo_r3.evals.metrics import EvalMetrics
    from emo_r3.evals.predictions import PredictionRecord
    from emo_r3.graphs.emotion_graph import EmotionGraph
    from emo_r3.graphs.results_file import ResultsFile

eval_app = typer.Typer(
    help="Evaluate on the standard visual-emotion datasets.", invoke_without_command=True, add_completion=False
)

PREDICTIONS, METRICS, META = "predictions.jsonl", "metrics.json", "meta.json"


@eval_app.callback()
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="KIND:PATH, e.g. emoset:/data/EmoSet-118K, hf:org/name[:config], hf:./folder"
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="split to use (the layout's default if omitted)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="graph config YAML")] = None,
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="eval folder (default runs/eval/KIND-SPLIT)")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="a seeded sample of this many items")] = None,
    seed: Annotated[int, typer.Option(help="seed of the --limit sample")] = 0,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", min=1)] = 4,
    max_rounds: Annotated[int | None, typer.Option("--max-rounds", min=0)] = None,
    paper_parity: Annotated[
        bool, typer.Option("--paper-parity", help="one SET answer per image, exact match of the boxed label")
    ] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="run failed items again")] = False,
    traces: Annotated[Path, typer.Option("--traces", help="trace store")] = DEFAULT_TRACE_PATH,
    no_traces: Annotated[bool, typer.Option("--no-traces")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON on stdout")] = False,
    image_column: Annotated[
        str | None, typer.Option(help="hf datasets: the image column (default: image, else images)")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="hf datasets: the label column (default: label, else answer)")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="hf datasets: a column of query texts")] = None,
    id_column: Annotated[
        str | None, typer.Option(help="hf datasets: a column of item ids (default: SPLIT:ROW)")
    ] = None,
    verbose: options.Verbose = False,
) -> None:
    """Run the graph over a dataset (resumable: re-run the same command to continue), then write predictions,
    metrics and a report (Markdown + self-contained HTML) into the eval folder. Exits 1 when items failed (after
    scoring the rest), 3 when predictions or the report could not be written."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        raise typer.BadParameter("--dataset KIND:PATH is required (or use `emo-r3 eval compare`)")
    quiet_third_party(verbose)
    from emo_r3.evals.datasets import DatasetError, HFColumns, load_dataset, parse_dataset_spec
    from emo_r3.graphs.cli.graph_setup import graph_config, load_graph, recorder

    named = {"image": image_column, "label": label_column, "text": text_column, "id": id_column}
    columns = HFColumns(**named) if any(named.values()) else None
    try:
        kind, path = parse_dataset_spec(dataset)
        loaded = load_dataset(kind, path, split=split, limit=limit, seed=seed, columns=columns)
    except DatasetError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error
    for problem in loaded.skipped:
        print_error(problem, label="skipped", style="yellow")
    folder = output or Path("runs") / "eval" / _folder_name(loaded)
    with _lock_predictions(folder) as results:  # held to the end: a second eval into this folder is refused
        cfg = graph_config(config, None, max_rounds)
        graph = load_graph(cfg, recorder(traces, no_traces, "eval", None))
        _run_pending(graph, loaded, results, folder, paper_parity, concurrency=concurrency, retry_errors=retry_errors)
        records = [results.records[item.id] for item in loaded.items if item.id in results.records]
        if not records:
            print_error("no item was evaluated (see the skipped inputs above)")
            raise typer.Exit(ExitCode.FAILED)
        metrics = _finish(folder, loaded, dataset, paper_parity, graph.config.fingerprint(), records)
    failed = sum(record.status == "error" for record in records)
    if as_json:
        summary = {"folder": str(folder), "failed": failed, "skipped": len(loaded.skipped)}
        sys.stdout.write(json.dumps(summary | {"metrics": metrics.model_dump(mode="json")}) + "\n")
    else:
        scores = f"macro-F1 {metrics.macro_f1:.4f}  weighted-F1 {metrics.weighted_f1:.4f}  ({metrics.n} items)"
        out.print(data(f"accuracy {metrics.accuracy:.4f}  {scores}"))
    if failed:  # skipped inputs are the dataset's (reported above), not failures of this run
        print_error(f"{failed} of {len(records)} items failed (scored as wrong); --retry-errors runs them again")
        raise typer.Exit(ExitCode.FAILED)


def _folder_name(loaded: LoadedDataset) -> str:
    """`KIND-SPLIT`; an hf dataset's name goes in too, since two of them share ids like `test:000000` (and an eval
    folder resumes by id)."""
    split = loaded.split or "all"
    if loaded.kind != "hf":
        return f"{loaded.kind}-{split}"
    name = Path(loaded.path).name if isinstance(loaded.path, Path) else loaded.path
    return f"hf-{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-')}-{split}"


def _run_pending(
    graph: EmotionGraph,
    loaded: LoadedDataset,
    results: ResultsFile[PredictionRecord],
    folder: Path,
    paper_parity: bool,
    *,
    concurrency: int,
    retry_errors: bool,
) -> None:
    """Every item not done yet, each prediction appended as it ends; exit 3 if one cannot be written."""
    from emo_r3.evals.runner import evaluate_graph, evaluate_paper_parity, pending_items
    from emo_r3.graphs.cli.progress import LiveProgress
    from emo_r3.graphs.results_file import ResultsWriteError

    items = pending_items(loaded, results, retry_errors)
    done = len(loaded.items) - len(items)
    err.print(data(f"{len(loaded.items)} items ({done} already done) → {folder}"))
    try:
        with LiveProgress("emo-r3 eval", total=len(loaded.items), done=done) as progress:
            common = {"max_concurrency": concurrency, "on_record": progress.item_done}
            if paper_parity:  # one prompt per image, no graph nodes to follow
                run = evaluate_paper_parity(graph, items, results, **common)
            else:
                run = evaluate_graph(graph, items, results, progress=progress.node_started, **common)
            asyncio.run(run)
    except ResultsWriteError as error:  # a full disk: stopped cleanly, the file cut back to its last record
        print_error(error)
        raise typer.Exit(ExitCode.STOPPED) from error
    finally:
        if graph.traces is not None:
            graph.traces.close()


def _finish(
    folder: Path, loaded: LoadedDataset, spec: str, parity: bool, config_hash: str, records: list[PredictionRecord]
) -> EvalMetrics:
    from emo_r3.evals.evaluation import scoring_label_set
    from emo_r3.evals.metrics import compute_metrics
    from emo_r3.evals.report import write_report
    from emo_r3.graphs.results_file import what_to_do

    metrics = compute_metrics(records, scoring_label_set(loaded))
    meta = {
        "dataset": spec,
        "kind": loaded.kind,
        "split": loaded.split,
        "label_set": loaded.label_set,
        "paper_parity": parity,
        "config_hash": config_hash,
        "items": len(records),
        "skipped": loaded.skipped,
    }
    title = f"EMO-R3 eval: {spec}" + (" (paper parity)" if parity else "")
    try:
        (folder / METRICS).write_text(metrics.model_dump_json(indent=2))
        (folder / META).write_text(json.dumps(meta, indent=2))
        markdown, html = write_report(metrics, records, folder, title=title, meta=meta)
    except OSError as error:  # a full disk after the last prediction: the predictions are safe, the report is not
        print_error(
            f"could not write the report into {folder}: {error.strerror or error}; every prediction is kept; "
            f"{what_to_do(error)} and run the same command again (nothing is evaluated twice)"
        )
        raise typer.Exit(ExitCode.STOPPED) from error
    err.print(data(f"report: {markdown}  {html}"))
    return metrics


def _lock_predictions(folder: Path) -> ResultsFile[PredictionRecord]:
    """The eval folder's predictions, locked for writing, or exit 2 with what to fix, before any model loads."""
    from emo_r3.evals.predictions import PredictionRecord
    from emo_r3.graphs.cli.output_paths import OutputPathError, check_output_file, check_output_folder
    from emo_r3.graphs.results_file import ResultsFile, ResultsFileError

    try:
        check_output_folder(folder)
        check_output_file(folder / PREDICTIONS)
        return ResultsFile(folder / PREDICTIONS, PredictionRecord).lock()
    except (OutputPathError, ResultsFileError) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def _open_predictions(path: Path) -> ResultsFile[PredictionRecord]:
    from emo_r3.evals.predictions import PredictionRecord
    from emo_r3.graphs.results_file import ResultsFile, ResultsFileError

    try:
        return ResultsFile(path, PredictionRecord)
    except ResultsFileError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error


def _read_predictions(folder: Path) -> tuple[list[PredictionRecord], str]:
    path = folder / PREDICTIONS
    if not path.is_file():
        print_error(f"{folder} holds no {PREDICTIONS}; pass the folder an `emo-r3 eval` wrote")
        raise typer.Exit(ExitCode.USAGE)
    records = list(_open_predictions(path).records.values())
    meta = json.loads((folder / META).read_text()) if (folder / META).is_file() else {}
    return records, meta.get("label_set") or (records[0].label_set if records else "mikels8")


@eval_app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="eval folder A")],
    run_b: Annotated[Path, typer.Argument(help="eval folder B")],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="also write comparison.md/.html here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON on stdout")] = False,
) -> None:
    """Side-by-side metrics of two evals on the same items, with a significance estimate for the difference."""
    from emo_r3.evals.compare import compare_runs
    from emo_r3.evals.report import write_comparison
    from emo_r3.prompts import get_label_set

    records_a, label_set = _read_predictions(run_a)
    records_b, _ = _read_predictions(run_b)
    try:
        comparison = compare_runs(records_a, records_b, get_label_set(label_set), name_a=run_a.name, name_b=run_b.name)
    except ValueError as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error
    if as_json:
        sys.stdout.write(comparison.model_dump_json() + "\n")
    else:
        table = Table("metric", Column(header=data(f"A {run_a.name}")), Column(header=data(f"B {run_b.name}")), "B − A")
        for row in comparison.rows():
            table.add_row(*map(data, row))
        out.print(table)
        out.print(data(comparison.verdict))
    if output is not None:
        meta = {"A": str(run_a), "B": str(run_b), "label_set": label_set}
        markdown, html = write_comparison(comparison, output, title=f"{run_a.name} vs {run_b.name}", meta=meta)
        err.print(data(f"comparison: {markdown}  {html}"))
