"""`emo-r3 traces ...`: list, show, diff, export and serve the runs recorded in a trace store."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer
from rich.text import Text

from emo_r3.graphs.cli.console import data, err, out, print_error
from emo_r3.graphs.cli.output_paths import OutputPathError, check_output_file
from emo_r3.graphs.traces.otel_destination import OtelConfigError, environment_endpoint
from emo_r3.graphs.traces.records import RunDetail, RunFilter
from emo_r3.graphs.traces.store import DEFAULT_TRACE_PATH, TraceStore, TraceStoreError
from emo_r3.graphs.traces.terminal_views import run_diff, run_tree, runs_table

if TYPE_CHECKING:  # the OpenTelemetry packages are optional; import them only when exporting
    from emo_r3.graphs.traces.otel import OtelRunExporter

traces_app = typer.Typer(
    help="Inspect recorded runs: why did the graph answer this?", no_args_is_help=True, add_completion=False
)

T = TypeVar("T")
MAX_LIST = 100_000  # rows one `traces list` prints; page with --offset beyond
MAX_OFFSET = 10**15  # SQLite's OFFSET is a 64-bit integer; far past any store

StoreOption = Annotated[Path, typer.Option("--traces", help="the trace store (SQLite file)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON on stdout instead of a table")]


def _open(path: Path) -> TraceStore:
    try:
        return TraceStore(path, readonly=True)
    except TraceStoreError as error:
        print_error(error)
        raise typer.Exit(2) from error


def _load(store: TraceStore, run_id: str) -> RunDetail:
    try:
        return _read(store.get_run, run_id)
    except KeyError as error:
        print_error(error.args[0])
        raise typer.Exit(2) from error


def _read(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A store read; a store found damaged while reading ends the command with its message, not a traceback."""
    try:
        return method(*args, **kwargs)
    except TraceStoreError as error:
        print_error(error)
        raise typer.Exit(2) from error


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or time, e.g. 2026-11-26 or 2026-11-26T14:00"
        ) from error
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@traces_app.command("list")
def list_runs(
    traces: StoreOption = DEFAULT_TRACE_PATH,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    label: Annotated[str | None, typer.Option(help="final label")] = None,
    termination: Annotated[str | None, typer.Option(help="accepted, max_rounds, error or timeout")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time (UTC unless given)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIST)] = 50,
    offset: Annotated[int, typer.Option(min=0, max=MAX_OFFSET)] = 0,
    as_json: JsonOption = False,
) -> None:
    """Recorded runs, newest first."""
    if status not in (None, "ok", "error"):
        raise typer.BadParameter("--status is ok or error")
    where = RunFilter(status=status, label=label, termination=termination, since=_since(since))
    store = _open(traces)
    runs = _read(store.list_runs, where, limit=limit, offset=offset)
    total = _read(store.count_runs, where)
    if as_json:
        page = {"total": total, "offset": offset, "runs": [run.model_dump(mode="json") for run in runs]}
        sys.stdout.write(json.dumps(page) + "\n")
        return
    out.print(runs_table(runs))
    err.print(Text(f"{offset + len(runs)} of {total} runs"))


@traces_app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="run id or a unique prefix")],
    traces: StoreOption = DEFAULT_TRACE_PATH,
    full: Annotated[bool, typer.Option("--full", help="whole prompts and token ids")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the whole run as JSON (as `traces export` writes it)")
    ] = False,
) -> None:
    """A run as a tree: path, each node's calls with prompt and answer, the checks, timings and reward."""
    detail = _load(_open(traces), run_id)
    if as_json:
        sys.stdout.write(detail.model_dump_json() + "\n")
        return
    out.print(run_tree(detail, full=full))


@traces_app.command()
def diff(
    run_a: Annotated[str, typer.Argument(help="first run id (or prefix)")],
    run_b: Annotated[str, typer.Argument(help="second run id (or prefix)")],
    traces: StoreOption = DEFAULT_TRACE_PATH,
) -> None:
    """What differs between two runs: outcome, path, and each step's text, call by call."""
    store = _open(traces)
    for renderable in run_diff(_load(store, run_a), _load(store, run_b)):
        out.print(renderable)


def otel_exporter(endpoint: str | None, *, include_content: bool = False) -> OtelRunExporter | None:
    """The OpenTelemetry exporter that `--otlp URL`, the application's tracer provider or the OTEL_EXPORTER_OTLP_*
    variables ask for (precedence: emo_r3.graphs.traces.otel), None when nothing does; a clear exit when the
    optional dependencies are missing or the settings cannot work."""
    try:
        from emo_r3.graphs.traces.otel import OtelRunExporter, current_destination
    except ImportError as error:
        named = None if endpoint else environment_endpoint(os.environ)
        if endpoint is None and named is None:
            return None  # nobody asked for spans, so nobody needs the extra
        print_error(f"{error}; {named[0]} asks for spans (unset it to run without)" if named else error)
        raise typer.Exit(2) from error
    try:
        if current_destination(endpoint) is None:
            return None
        return OtelRunExporter(endpoint, include_content=include_content)
    except OtelConfigError as error:
        print_error(error)
        raise typer.Exit(2) from error


@traces_app.command()
def export(
    traces: StoreOption = DEFAULT_TRACE_PATH,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="JSONL file (default: stdout)")] = None,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time")] = None,
    otlp: Annotated[
        str | None, typer.Option("--otlp", help="send as OpenTelemetry spans to this OTLP/HTTP endpoint instead")
    ] = None,
    include_content: Annotated[
        bool, typer.Option("--include-content", help="with --otlp: put prompts and answers in the spans")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out file")] = False,
) -> None:
    """Every matching run as one JSON line (result, all calls with token ids and logprobs, rewards), or as spans."""
    if output is not None:
        _check_export_target(output, traces, force)
    store = _open(traces)
    where = RunFilter(status=status, since=_since(since))
    if otlp:
        _export_spans(store, where, otlp, include_content)
        return
    if output is None:
        count = _write_runs(store, where, sys.stdout)
    else:  # written beside the target and renamed when complete: a killed export leaves no half file
        partial = output.with_name(f".{output.name}.partial")
        output.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8") as sink:
            count = _write_runs(store, where, sink)
        partial.replace(output)
    err.print(data(f"exported {count} runs" + (f" to {output}" if output else "")))


def _write_runs(store: TraceStore, where: RunFilter, sink: TextIO) -> int:
    count = 0
    for detail in _read(store.iter_runs, where):
        sink.write(detail.model_dump_json() + "\n")
        count += 1
    return count


def _check_export_target(output: Path, store: Path, force: bool) -> None:
    """Never the store itself (or its WAL), never an existing file unless `--force`, and a writable path."""
    problem = None
    if any(_same_file(output, store.with_name(store.name + suffix)) for suffix in ("", "-wal", "-shm", "-journal")):
        problem = f"{output} is the trace store (or its journal) being exported; give another file"
    elif output.exists() and not force and not output.is_dir():
        problem = f"{output} exists; pass --force to replace it, or give another file"
    else:
        try:
            check_output_file(output)
        except OutputPathError as error:
            problem = str(error)
    if problem:
        print_error(problem)
        raise typer.Exit(2)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _export_spans(store: TraceStore, where: RunFilter, endpoint: str, include_content: bool) -> None:
    exporter = otel_exporter(endpoint, include_content=include_content)
    assert exporter is not None  # an explicit endpoint always makes one
    count = 0
    for detail in _read(store.iter_runs, where):
        exporter.export_stored(detail)
        count += 1
    exporter.shutdown()
    if exporter.failures:
        print_error(f"{exporter.failures} runs or span batches could not be sent to {exporter.destination}")
        raise typer.Exit(1)
    err.print(Text(f"exported {count} runs as OpenTelemetry spans to {exporter.destination}"))


@traces_app.command()
def serve(
    traces: StoreOption = DEFAULT_TRACE_PATH,
    host: Annotated[str, typer.Option(help="interface to bind; loopback unless --allow-remote")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8765,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="allow a non-loopback host (traces hold prompts and answers)")
    ] = False,
) -> None:
    """Browse the traces in a read-only web page (run list, run pages with token logprobs, training steps)."""
    from emo_r3.graphs.traces.viewer.server import serve as serve_viewer

    try:
        serve_viewer(traces, host=host, port=port, allow_remote=allow_remote)
    except (ValueError, TraceStoreError, OSError) as error:
        print_error(error)
        raise typer.Exit(2) from error
