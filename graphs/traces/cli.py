"""`emo-r3 traces ...`: list, show, diff, export and serve the runs recorded in a trace store."""

from __future__ import annotations

import difflib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from emo_r3.agents.call_record import LLMCall
from emo_r3.graphs.cli.console import err, out, print_error
from emo_r3.graphs.traces.records import RunDetail, RunFilter
from emo_r3.graphs.traces.store import DEFAULT_TRACE_PATH, TraceStore, TraceStoreError

if TYPE_CHECKING:  # the OpenTelemetry packages are optional; import them only when exporting
    from emo_r3.graphs.traces.otel import OtelRunExporter

traces_app = typer.Typer(
    help="Inspect recorded runs: why did the graph answer this?", no_args_is_help=True, add_completion=False
)

StoreOption = Annotated[Path, typer.Option("--traces", help="the trace store (SQLite file)")]


def _open(path: Path) -> TraceStore:
    try:
        return TraceStore(path, readonly=True)
    except TraceStoreError as error:
        print_error(error)
        raise typer.Exit(2) from error


def _load(store: TraceStore, run_id: str) -> RunDetail:
    try:
        return store.get_run(run_id)
    except KeyError as error:
        print_error(error.args[0])
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


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@traces_app.command("list")
def list_runs(
    traces: StoreOption = DEFAULT_TRACE_PATH,
    status: Annotated[str | None, typer.Option(help="ok or error")] = None,
    label: Annotated[str | None, typer.Option(help="final label")] = None,
    termination: Annotated[str | None, typer.Option(help="accepted, max_rounds, error or timeout")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date/time (UTC unless given)")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Recorded runs, newest first."""
    if status not in (None, "ok", "error"):
        raise typer.BadParameter("--status is ok or error")
    where = RunFilter(status=status, label=label, termination=termination, since=_since(since))
    store = _open(traces)
    runs = store.list_runs(where, limit=limit, offset=offset)
    table = Table("run", "time (UTC)", "input", "label", "termination", "rounds", "path", "latency")
    for run in runs:
        table.add_row(
            run.id[:12], _when(run.created_at), Text(run.input_ref or run.query_id), run.label or "-",
            run.termination, str(run.rounds), " → ".join(run.path), f"{run.latency_s:.2f}s",
        )  # fmt: skip
    out.print(table)
    err.print(Text(f"{offset + len(runs)} of {store.count_runs(where)} runs"))


@traces_app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="run id or a unique prefix")],
    traces: StoreOption = DEFAULT_TRACE_PATH,
    full: Annotated[bool, typer.Option("--full", help="whole prompts and token ids")] = False,
) -> None:
    """A run as a tree: path, each node's calls with prompt and answer, the checks, timings and reward."""
    detail = _load(_open(traces), run_id)
    result, summary = detail.result, detail.summary
    tree = Tree(Text.assemble((f"run {summary.id}", "bold"), f"  {_when(summary.created_at)}  {summary.source}"))
    tree.add(Text(f"input: {summary.input_ref or summary.query_id}"))
    tree.add(Text(f"path: {' → '.join(summary.path)}"))
    verdict = tree.add(Text(f"result: {result.label or '-'} ({result.termination})", style="bold"))
    verdict.add(
        Text(f"valence {result.valence or '?'}, arousal {result.arousal or '?'}, format ok: {result.format_ok}")
    )
    if result.coherence:
        verdict.add(Text(f"coherence: {'pass' if result.coherence.passed else 'fail'} "
                         f"(text implies {result.coherence.implied_label or 'nothing usable'})"))  # fmt: skip
    if result.consistency:
        verdict.add(Text(f"consistency: {'pass' if result.consistency.passed else 'fail'} "
                         f"(answer {result.consistency.answer or 'unusable'})"))  # fmt: skip
    if result.error:
        verdict.add(Text(f"error: {result.error}", style="red"))
    calls = result.trajectory.calls if result.trajectory else []
    nodes: dict[tuple[str, int], Tree] = {}
    for index, call in enumerate(calls):
        key = (call.node, call.round)
        if key not in nodes:
            nodes[key] = tree.add(Text(f"{call.node} (round {call.round})", style="cyan"))
        _add_call(nodes[key], index, call, full=full)
    for role, breakdown in detail.rewards.items():
        rewards = tree.add(Text(f"reward{' (' + role + ')' if role else ''}", style="bold"))
        for name, value in breakdown.items():
            rewards.add(Text(f"{name}: {value:.4g}"))
    out.print(tree)


def _add_call(parent: Tree, index: int, call: LLMCall, *, full: bool) -> None:
    heading = (
        f"#{index} {call.role}/{call.purpose}  {call.model_id}{'@' + call.adapter if call.adapter else ''}  "
        f"{call.latency_s * 1000:.0f} ms  {len(call.prompt_token_ids)}→{len(call.completion_token_ids)} tokens  "
        f"finish={call.finish_reason}"
    )
    node = parent.add(Text(heading, style="red" if call.error else ""))
    prompt = "\n".join(message.text for message in call.messages)
    images = sum(len(message.images) for message in call.messages)
    node.add(Text(f"prompt ({images} image{'s' if images != 1 else ''}): " + (prompt if full else _clip(prompt))))
    if call.choices:
        node.add(Text(f"choices: {', '.join(call.choices)}"))
    node.add(Text("answer: " + (call.text if full else _clip(call.text)), style="green"))
    if call.parsed:
        node.add(Text(f"parsed: {call.parsed}"))
    if call.logprobs:
        mean = sum(call.logprobs) / len(call.logprobs)
        node.add(Text(f"logprobs: mean {mean:.3f}, min {min(call.logprobs):.3f} ({call.logprob_mode})"))
    if full:
        node.add(Text(f"completion ids: {call.completion_token_ids}"))
    if call.error:
        node.add(Text(f"error: {call.error}", style="red"))


def _clip(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@traces_app.command()
def diff(
    run_a: Annotated[str, typer.Argument(help="first run id (or prefix)")],
    run_b: Annotated[str, typer.Argument(help="second run id (or prefix)")],
    traces: StoreOption = DEFAULT_TRACE_PATH,
) -> None:
    """What differs between two runs: outcome, path, and each step's text, call by call."""
    store = _open(traces)
    a, b = _load(store, run_a), _load(store, run_b)
    table = Table("", f"A {a.summary.id[:12]}", f"B {b.summary.id[:12]}")
    for name, left, right in _outcome_rows(a, b):
        table.add_row(name, Text(left), Text(right), style="bold yellow" if left != right else "")
    out.print(table)
    calls_a = a.result.trajectory.calls if a.result.trajectory else []
    calls_b = b.result.trajectory.calls if b.result.trajectory else []
    for index in range(max(len(calls_a), len(calls_b))):
        left = calls_a[index] if index < len(calls_a) else None
        right = calls_b[index] if index < len(calls_b) else None
        _print_call_diff(index, left, right)


def _outcome_rows(a: RunDetail, b: RunDetail) -> list[tuple[str, str, str]]:
    def fields(d: RunDetail) -> dict[str, str]:
        r = d.result
        return {
            "input": d.summary.input_ref or d.summary.query_id,
            "label": str(r.label), "termination": r.termination, "path": " → ".join(d.summary.path),
            "coherence": str(r.coherence.passed if r.coherence else None),
            "consistency": str(r.consistency.passed if r.consistency else None),
            "format ok": str(r.format_ok), "latency": f"{d.summary.latency_s:.2f}s",
        }  # fmt: skip

    left, right = fields(a), fields(b)
    return [(name, left[name], right[name]) for name in left]


def _print_call_diff(index: int, left: LLMCall | None, right: LLMCall | None) -> None:
    title = f"call #{index}: {_call_name(left)} | {_call_name(right)}"
    if left is None or right is None:
        out.print(Text(title + "  (only in " + ("B" if left is None else "A") + ")", style="yellow"))
        return
    if left.text == right.text and left.messages == right.messages:
        out.print(Text(title + "  (same prompt and answer)", style="dim"))
        return
    out.print(Text(title, style="bold"))
    for label, old, new in (("prompt", _prompt(left), _prompt(right)), ("answer", left.text, right.text)):
        if old != new:
            lines = difflib.unified_diff(old.splitlines(), new.splitlines(), f"A {label}", f"B {label}", lineterm="")
            for line in lines:
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
                out.print(Text(line, style=style))


def _call_name(call: LLMCall | None) -> str:
    return f"{call.role}/{call.purpose} r{call.round}" if call else "-"


def _prompt(call: LLMCall) -> str:
    return "\n".join(message.text for message in call.messages)


def otel_exporter(endpoint: str, *, include_content: bool = False) -> OtelRunExporter:
    """An OpenTelemetry exporter, or a clear exit when the optional dependencies are missing."""
    try:
        from emo_r3.graphs.traces.otel import OtelRunExporter
    except ImportError as error:
        print_error(error)
        raise typer.Exit(2) from error
    return OtelRunExporter(endpoint, include_content=include_content)


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
) -> None:
    """Every matching run as one JSON line (result, all calls with token ids and logprobs, rewards), or as spans."""
    store = _open(traces)
    where = RunFilter(status=status, since=_since(since))
    if otlp:
        _export_spans(store, where, otlp, include_content)
        return
    sink = output.open("w", encoding="utf-8") if output else sys.stdout
    count = 0
    try:
        for detail in store.iter_runs(where):
            sink.write(detail.model_dump_json() + "\n")
            count += 1
    finally:
        if output:
            sink.close()
    err.print(Text(f"exported {count} runs" + (f" to {output}" if output else "")))


def _export_spans(store: TraceStore, where: RunFilter, endpoint: str, include_content: bool) -> None:
    exporter = otel_exporter(endpoint, include_content=include_content)
    count = 0
    for detail in store.iter_runs(where):
        exporter.export_stored(detail)
        count += 1
    exporter.shutdown()
    if exporter.failures:
        print_error(f"{exporter.failures} runs or span batches could not be sent to {endpoint}")
        raise typer.Exit(1)
    err.print(Text(f"exported {count} runs as OpenTelemetry spans to {endpoint}"))


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
    from emo_r3.graphs.traces.viewer import serve as serve_viewer

    try:
        serve_viewer(traces, host=host, port=port, allow_remote=allow_remote)
    except (ValueError, TraceStoreError, OSError) as error:
        print_error(error)
        raise typer.Exit(2) from error
