"""Recorded runs as terminal output: the run list as a table, one run as a tree, two runs as a diff.

Pure functions from store records to rich renderables, so every one can be rendered in a test. Everything that comes
from a run (paths, labels, prompts, answers, errors) goes through `data()`: printed literally, never read as rich
markup or terminal control.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from rich.console import RenderableType
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

from emo_r3.agents.call_record import LLMCall
from emo_r3.graphs.cli.console import data
from emo_r3.graphs.traces.records import RunDetail, RunSummary

CLIP = 400  # characters of a prompt or answer shown without --full


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def runs_table(runs: Sequence[RunSummary]) -> Table:
    table = Table("run", "time (UTC)", "input", "label", "termination", "rounds", "path", "latency")
    for run in runs:
        table.add_row(
            data(run.id[:12]), when(run.created_at), data(run.input_ref or run.query_id), data(run.label or "-"),
            data(run.termination), str(run.rounds), data(" → ".join(run.path)), f"{run.latency_s:.2f}s",
        )  # fmt: skip
    return table


def run_tree(detail: RunDetail, *, full: bool = False) -> Tree:
    """Path, outcome and checks, then each node's calls with prompt and answer, then the reward breakdown."""
    result, summary = detail.result, detail.summary
    tree = Tree(
        Text.assemble(data(f"run {summary.id}", "bold"), data(f"  {when(summary.created_at)}  {summary.source}"))
    )
    tree.add(data(f"input: {summary.input_ref or summary.query_id}"))
    tree.add(data(f"path: {' → '.join(summary.path)}"))
    verdict = tree.add(data(f"result: {result.label or '-'} ({result.termination})", "bold"))
    verdict.add(
        data(f"valence {result.valence or '?'}, arousal {result.arousal or '?'}, format ok: {result.format_ok}")
    )
    if result.coherence:
        implied = result.coherence.implied_label or "nothing usable"
        verdict.add(data(f"coherence: {'pass' if result.coherence.passed else 'fail'} (text implies {implied})"))
    if result.consistency:
        answer = result.consistency.answer or "unusable"
        verdict.add(data(f"consistency: {'pass' if result.consistency.passed else 'fail'} (answer {answer})"))
    if result.error:
        verdict.add(data(f"error: {result.error}", "red"))
    nodes: dict[tuple[str, int], Tree] = {}
    for index, call in enumerate(result.trajectory.calls if result.trajectory else []):
        key = (call.node, call.round)
        if key not in nodes:
            nodes[key] = tree.add(data(f"{call.node} (round {call.round})", "cyan"))
        _add_call(nodes[key], index, call, full=full)
    for role, breakdown in detail.rewards.items():
        rewards = tree.add(data(f"reward{' (' + role + ')' if role else ''}", "bold"))
        for name, value in breakdown.items():
            rewards.add(data(f"{name}: {value:.4g}"))
    return tree


def _add_call(parent: Tree, index: int, call: LLMCall, *, full: bool) -> None:
    model = f"{call.model_id}{'@' + call.adapter if call.adapter else ''}"
    tokens = f"{len(call.prompt_token_ids)}→{len(call.completion_token_ids)} tokens"
    queued = f" (+{call.queue_s * 1000:.0f} ms queued)" if call.queue_s >= 0.0005 else ""
    heading = f"#{index} {call.role}/{call.purpose}  {model}  {call.latency_s * 1000:.0f} ms{queued}  {tokens}"
    node = parent.add(data(f"{heading}  finish={call.finish_reason}", "red" if call.error else ""))
    prompt = prompt_text(call)
    images = sum(len(message.images) for message in call.messages)
    node.add(data(f"prompt ({images} image{'s' if images != 1 else ''}): " + (prompt if full else clip(prompt))))
    if call.choices:
        node.add(data(f"choices: {', '.join(call.choices)}"))
    node.add(data("answer: " + (call.text if full else clip(call.text)), "green"))
    if call.parsed:
        node.add(data(f"parsed: {call.parsed}"))
    if call.logprobs:
        mean = sum(call.logprobs) / len(call.logprobs)
        node.add(data(f"logprobs: mean {mean:.3f}, min {min(call.logprobs):.3f} ({call.logprob_mode})"))
    if full:
        node.add(data(f"completion ids: {call.completion_token_ids}"))
    if call.error:
        node.add(data(f"error: {call.error}", "red"))


def clip(text: str, limit: int = CLIP) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def prompt_text(call: LLMCall) -> str:
    return "\n".join(message.text for message in call.messages)


def run_diff(a: RunDetail, b: RunDetail) -> Iterator[RenderableType]:
    """The outcomes side by side, then each call's prompt and answer diff."""
    table = Table("", Column(header=data(f"A {a.summary.id[:12]}")), Column(header=data(f"B {b.summary.id[:12]}")))
    left, right = _outcome(a), _outcome(b)
    for name in left:
        table.add_row(
            name, data(left[name]), data(right[name]), style="bold yellow" if left[name] != right[name] else ""
        )
    yield table
    calls_a = a.result.trajectory.calls if a.result.trajectory else []
    calls_b = b.result.trajectory.calls if b.result.trajectory else []
    for index in range(max(len(calls_a), len(calls_b))):
        yield from _call_diff(index, _at(calls_a, index), _at(calls_b, index))


def _at(calls: Sequence[LLMCall], index: int) -> LLMCall | None:
    return calls[index] if index < len(calls) else None


def _outcome(detail: RunDetail) -> dict[str, str]:
    result = detail.result
    return {
        "input": detail.summary.input_ref or detail.summary.query_id,
        "label": str(result.label),
        "termination": result.termination,
        "path": " → ".join(detail.summary.path),
        "coherence": str(result.coherence.passed if result.coherence else None),
        "consistency": str(result.consistency.passed if result.consistency else None),
        "format ok": str(result.format_ok),
        "latency": f"{detail.summary.latency_s:.2f}s",
    }


def _call_diff(index: int, left: LLMCall | None, right: LLMCall | None) -> Iterator[Text]:
    title = f"call #{index}: {_call_name(left)} | {_call_name(right)}"
    if left is None or right is None:
        yield data(title + "  (only in " + ("B" if left is None else "A") + ")", "yellow")
        return
    if left.text == right.text and left.messages == right.messages:
        yield data(title + "  (same prompt and answer)", "dim")
        return
    yield data(title, "bold")
    for label, old, new in (("prompt", prompt_text(left), prompt_text(right)), ("answer", left.text, right.text)):
        if old != new:
            for line in difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"A {label}", f"B {label}", lineterm=""
            ):
                yield data(line, "green" if line.startswith("+") else "red" if line.startswith("-") else "")


def _call_name(call: LLMCall | None) -> str:
    return f"{call.role}/{call.purpose} r{call.round}" if call else "-"
