"""The pages: run list, one run (path diagram, calls, tokens, rewards), training steps, thumbnails, the stylesheet."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ImagePart
from emo_r3.graphs.traces.records import RunDetail, RunSummary
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.traces.viewer.formatting import local_time, number, pretty_json, short_id
from emo_r3.graphs.traces.viewer.path_diagram import layout_path
from emo_r3.graphs.traces.viewer.query_params import STATUSES, TERMINATIONS, parse_list_query, parse_step
from emo_r3.graphs.traces.viewer.responses import HttpError, Response, html
from emo_r3.graphs.traces.viewer.tokens import TokenDecoder, TokenView, legend, token_views

PAGE_SIZE = 50
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ViewerContext:
    """What every request shares: where the store is and the tokenizer cache."""

    store_path: Path
    decoder: TokenDecoder


@dataclass(frozen=True)
class RunRow:
    summary: RunSummary
    time: str
    short_id: str
    latency: str
    path: str
    thumbnail: str | None
    input_name: str  # file names only: batch inputs share long folder prefixes that would fill the column


def view_runs(store: TraceStore, params: dict[str, str], _: ViewerContext) -> Response:
    query = parse_list_query(params)
    where = query.run_filter()
    total = store.count_runs(where)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    runs = store.list_runs(where, limit=PAGE_SIZE, offset=(query.page - 1) * PAGE_SIZE)
    return html(
        "runs.html.j2", title="Runs", query=query, total=total, pages=pages, rows=[_run_row(r) for r in runs],
        first=(query.page - 1) * PAGE_SIZE + 1, statuses=STATUSES, terminations=TERMINATIONS,
        previous=query.link(query.page - 1) if query.page > 1 else None,
        next=query.link(query.page + 1) if query.page < pages else None,
    )  # fmt: skip


def _run_row(summary: RunSummary) -> RunRow:
    return RunRow(
        summary=summary, time=local_time(summary.created_at), short_id=short_id(summary.id),
        latency=f"{summary.latency_s:.2f} s", path=" → ".join(summary.path) or "—",
        thumbnail=summary.image_hashes[0] if summary.image_hashes else None,
        input_name=", ".join(ref.rsplit("/", 1)[-1] for ref in (summary.input_ref or "—").split(", ")),
    )  # fmt: skip


@dataclass(frozen=True)
class MessageView:
    role: str
    parts: list[tuple[str, str]]  # ("text", text) or ("image", sha256)


@dataclass(frozen=True)
class CallView:
    index: int
    call: LLMCall
    sampling: str
    tokens: list[TokenView]
    decoded: bool
    messages: list[MessageView]
    parsed: str | None
    problems: list[str]
    stats: str


def view_run(store: TraceStore, run_id: str, context: ViewerContext) -> Response:
    try:
        detail = store.get_run(run_id)
    except KeyError as error:
        raise HttpError(HTTPStatus.NOT_FOUND, _without_path(error, store)) from error
    result, trajectory = detail.result, detail.result.trajectory
    calls = trajectory.calls if trajectory else []
    reflections = trajectory.reflections if trajectory else []
    return html(
        "run.html.j2", title=f"Run {short_id(detail.summary.id)}", detail=detail, result=result,
        trajectory=trajectory, time=local_time(detail.summary.created_at), reflections=reflections,
        diagram=layout_path(detail.summary.path, reflections, result.termination),
        rewards=_reward_rows(detail), calls=[_call_view(i, c, context.decoder) for i, c in enumerate(calls)],
        legend=legend(),
    )  # fmt: skip


def _without_path(error: KeyError, store: TraceStore) -> str:
    """The store's not-found message, less the file's location (not the browser's business)."""
    return str(error.args[0]).removesuffix(f" in {store.path}")


def _reward_rows(detail: RunDetail) -> list[tuple[str, str, str]]:
    return [
        (role or "trajectory", name, number(value))
        for role, breakdown in sorted(detail.rewards.items())
        for name, value in sorted(breakdown.items())
    ]


def _call_view(index: int, call: LLMCall, decoder: TokenDecoder) -> CallView:
    tokens, decoded = token_views(call, decoder)
    problems = call.parsed.get("problems") if call.parsed else None
    return CallView(
        index=index, call=call, tokens=tokens, decoded=decoded,
        sampling=", ".join(f"{k}={v}" for k, v in call.sampling.model_dump().items() if v is not None),
        messages=[_message_view(m) for m in call.messages],
        parsed=pretty_json(call.parsed) if call.parsed is not None else None,
        problems=[str(p) for p in problems] if isinstance(problems, list) else [], stats=_logprob_stats(call.logprobs),
    )  # fmt: skip


def _message_view(message: Any) -> MessageView:
    parts = [("image", p.image.sha256) if isinstance(p, ImagePart) else ("text", p.text) for p in message.content]
    return MessageView(message.role, parts)


def _logprob_stats(logprobs: Sequence[float]) -> str:
    finite = [lp for lp in logprobs if math.isfinite(lp)]
    if not finite:
        return "no logprobs"
    total = sum(finite)
    return f"Σ {total:.2f} · mean {total / len(finite):.2f} · min {min(finite):.2f}"


def view_training(store: TraceStore, _: ViewerContext) -> Response:
    steps = store.list_training_steps()
    names = sorted({name for step in steps for name in step.metrics})
    rows = [(s, local_time(s.created_at), [number(s.metrics[n]) if n in s.metrics else "" for n in names])
            for s in steps]  # fmt: skip
    return html("training.html.j2", title="Training", names=names, rows=rows)


def view_training_step(store: TraceStore, run_name: str, raw_step: str, _: ViewerContext) -> Response:
    step_number = parse_step(raw_step)
    try:
        step = store.get_training_step(run_name, step_number)
    except KeyError as error:
        raise HttpError(HTTPStatus.NOT_FOUND, _without_path(error, store)) from error
    names = sorted({name for row in step.rows for name in row.values})
    rows = [(r, number(r.advantage), [number(r.values[n]) if n in r.values else "" for n in names]) for r in step.rows]
    metrics = [(name, number(value)) for name, value in sorted(step.metrics.items())]
    return html(
        "training_step.html.j2", title=f"{run_name} step {step.step}", step=step, metrics=metrics, names=names,
        rows=rows, time=local_time(step.created_at),
    )  # fmt: skip


def view_image(store: TraceStore, filename: str, _: ViewerContext) -> Response:
    sha256 = filename.removesuffix(".jpg")
    if not filename.endswith(".jpg") or not _SHA256.fullmatch(sha256):
        raise HttpError(HTTPStatus.BAD_REQUEST, "an image is named by its sha256 in lowercase hex, then .jpg")
    data = store.thumbnail(sha256)
    if not data:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no image {sha256} in this trace store")
    return Response(HTTPStatus.OK, "image/jpeg", data, {"Cache-Control": "private, max-age=86400, immutable"})


def view_stylesheet() -> Response:
    css = resources.files("emo_r3.graphs.traces.viewer").joinpath("templates/viewer.css").read_bytes()
    return Response(HTTPStatus.OK, "text/css; charset=utf-8", css, {"Cache-Control": "no-cache"})
