"""A read-only web viewer for the trace store: run list, one run's graph path and calls, training steps.

Standard library HTTP only (no framework): the viewer must start anywhere `emo-r3` is installed, and it only
ever reads. Every page is rendered by Jinja with autoescaping, and every response carries a strict
Content-Security-Policy with no script source at all, because the pages show model output and user text
verbatim: a trace of an answer containing `<script>` must be a trace, never a script.

It binds to loopback unless told otherwise: traces hold prompts, images and user text, so exposing them to a
network is a decision the user makes explicitly (`allow_remote` / `--allow-remote`).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import jinja2

from agents.call_record import LLMCall
from agents.chat_model import ImagePart
from agents.model_cache import default_model_cache
from graphs.trace_store import RunDetail, RunFilter, RunSummary, TraceStore, TraceStoreError
from graphs.trajectory import Reflection

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_PAGE = 10_000_000  # beyond this an OFFSET overflows SQLite's integer; nobody pages that far by hand
TERMINATIONS = ("accepted", "max_rounds", "error", "timeout")
STATUSES = ("ok", "error")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
OFFLINE_PREFIX = "offline:"  # as graphs.config.OFFLINE_PREFIX; kept local so the viewer never imports torch

# No script at all; styles and images only from the viewer itself; nothing may frame the page or post a form away.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NO_STORE = "no-store"  # traces change while a batch runs; a stale page misleads

# Upper logprob bound of each colour bucket (0 = confident ... last = very unlikely). Log-spaced, because a
# researcher cares about p=0.99 vs 0.9 as much as about p=0.01 vs 0.001.
LOGPROB_BUCKETS = (-0.05, -0.2, -0.5, -1.0, -2.0, -4.0, -7.0, -10.0)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("graphs", "templates/viewer"),
    autoescape=True,  # every template is HTML; data is never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters["seg"] = lambda value: quote(str(value), safe="")  # one URL path segment


class HttpError(Exception):
    """A request the viewer answers with an error page instead of a traceback."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def html(template: str, code: HTTPStatus = HTTPStatus.OK, **context: Any) -> Response:
    body = _TEMPLATES.get_template(template).render(**context).encode()
    return Response(code, "text/html; charset=utf-8", body)


# --------------------------------------------------------------------------- host check


def is_loopback(host: str) -> bool:
    """Only names that cannot reach another machine: 127.0.0.0/8, ::1 and the localhost names."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"refusing to serve traces on {host!r}: it is not a loopback address, and traces hold prompts, images "
            "and user text; pass allow_remote=True (`--allow-remote` on the command line) to expose them"
        )


# --------------------------------------------------------------------------- tokens


class TokenDecoder:
    """Token id -> its text, from the model folder's `tokenizer.json` when the trace's model is on this machine.

    Uses the `tokenizers` library alone (no model, no transformers import), loads each tokenizer once, and
    answers None when the model is unknown here, so pages fall back to showing token ids.
    """

    def __init__(self, model_cache: Path | None = None) -> None:
        self.model_cache = model_cache or default_model_cache()
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def tokenizer_file(self, model_id: str) -> Path | None:
        if model_id.startswith(OFFLINE_PREFIX):
            kind = model_id.removeprefix(OFFLINE_PREFIX)
            candidate = self.model_cache / kind / "tokenizer.json" if kind and "/" not in kind else None
        else:
            candidate = Path(model_id).expanduser() / "tokenizer.json"
        try:
            return candidate if candidate is not None and candidate.is_file() else None
        except OSError:  # a model id that is not a usable path (too long, bad characters)
            return None

    def _tokenizer(self, model_id: str) -> Any:
        with self._lock:
            if model_id not in self._cache:
                self._cache[model_id] = _load_tokenizer(self.tokenizer_file(model_id))
            return self._cache[model_id]

    def decode(self, model_id: str, token_ids: Sequence[int]) -> list[str | None] | None:
        tokenizer = self._tokenizer(model_id)
        if tokenizer is None:
            return None
        byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
        return [_token_text(tokenizer, token_id, byte_level) if token_id >= 0 else None for token_id in token_ids]


def _load_tokenizer(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception as error:  # a broken or foreign tokenizer file must not break the page
        logger.warning("cannot load tokenizer %s: %s", path, error)
        return None


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: byte-level BPE pieces back to the exact bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _token_text(tokenizer: Any, token_id: int, byte_level: bool) -> str | None:
    """The token's own bytes; a piece of a multi-byte character shows as `\\xNN` rather than a lost `�`."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return None  # an id past the tokenizer (padded embedding rows)
    if byte_level and all(char in _BYTE_DECODER for char in piece):
        return bytes(_BYTE_DECODER[char] for char in piece).decode("utf-8", errors="backslashreplace")
    return tokenizer.decode([token_id], skip_special_tokens=False)


@dataclass(frozen=True)
class TokenView:
    text: str
    token_id: int
    logprob: str
    bucket: str
    title: str


def logprob_bucket(logprob: float | None) -> str:
    if logprob is None or math.isnan(logprob):
        return "lp-none"
    for index, bound in enumerate(LOGPROB_BUCKETS):
        if logprob >= bound:
            return f"lp{index}"
    return f"lp{len(LOGPROB_BUCKETS)}"


def token_views(call: LLMCall, decoder: TokenDecoder) -> tuple[list[TokenView], bool]:
    """One view per completion token, and whether the texts are real (else each shows its id)."""
    decoded = decoder.decode(call.model_id, call.completion_token_ids)
    texts = decoded or [None] * len(call.completion_token_ids)
    views = []
    for index, (token_id, text) in enumerate(zip(call.completion_token_ids, texts, strict=True)):
        logprob = call.logprobs[index] if index < len(call.logprobs) else None
        shown = f"#{token_id}" if text is None else _visible(text)
        number = "none" if logprob is None else f"{logprob:.4f}"
        probability = "" if logprob is None or math.isnan(logprob) else f" · p {math.exp(logprob):.3g}"
        title = f"token {index} · id {token_id} · logprob {number}{probability}"
        views.append(TokenView(shown, token_id, number, logprob_bucket(logprob), title))
    return views, decoded is not None


def _visible(text: str) -> str:
    """Whitespace-only tokens still need something to colour and hover."""
    if not text:
        return "∅"
    return text.replace("\n", "↵\n").replace("\t", "⇥\t")


def legend() -> list[tuple[str, str]]:
    """(bucket class, probability range) for the colour key above the tokens."""
    rows = [(f"lp{i}", f"p ≥ {math.exp(bound):.2g}") for i, bound in enumerate(LOGPROB_BUCKETS)]
    return [*rows, (f"lp{len(LOGPROB_BUCKETS)}", f"p < {math.exp(LOGPROB_BUCKETS[-1]):.2g}")]


# --------------------------------------------------------------------------- the path diagram

NODE_COLUMNS = {"perceive": 0, "reason": 1, "reflect": 2, "finalize": 3}
NODE_W, NODE_H, PITCH_X, PITCH_Y, LEFT, TOP = 124, 46, 176, 92, 78, 16
DECISION_LABELS = {"revise_perception": "revise perception", "revise_reasoning": "revise reasoning"}


@dataclass(frozen=True)
class SvgNode:
    step: int
    name: str
    x: int
    y: int
    css: str
    caption: str
    width: int = NODE_W
    height: int = NODE_H

    @property
    def cx(self) -> int:
        return self.x + self.width // 2

    @property
    def order_x(self) -> int:
        return self.x + 8

    @property
    def text_y(self) -> tuple[int, int, int]:
        """Baselines of the order badge, the node name and the caption."""
        return self.y + 14, self.y + 20, self.y + 37


@dataclass(frozen=True)
class SvgEdge:
    x1: int
    y1: int
    x2: int
    y2: int
    kind: str
    label: str

    @property
    def label_x(self) -> int:
        return (self.x1 + self.x2) // 2 + (8 if self.kind == "revise" else 0)

    @property
    def label_y(self) -> int:
        return (self.y1 + self.y2) // 2 - (0 if self.kind == "revise" else 6)


@dataclass(frozen=True)
class PathDiagram:
    width: int
    height: int
    nodes: list[SvgNode]
    edges: list[SvgEdge]
    rows: list[tuple[int, str]]  # (y, "round N") labels down the left margin


def layout_path(path: Sequence[str], reflections: Sequence[Reflection], termination: str) -> PathDiagram | None:
    """The run unrolled: one column per node kind, one row per round, so every correction is a visible arrow
    back to the left, and the arrow into finalize is coloured by what ended the run."""
    if not path:
        return None
    reflect_at = _reflection_per_step(path, reflections)
    nodes: list[SvgNode] = []
    row = 0
    for step, name in enumerate(path):
        column = NODE_COLUMNS.get(name, 3)
        if nodes and column <= NODE_COLUMNS.get(nodes[-1].name, 3):
            row += 1
        x, y = LEFT + column * PITCH_X, TOP + row * PITCH_Y
        css, caption = _node_style(name, step, path, reflect_at.get(step), termination)
        nodes.append(SvgNode(step, name, x, y, css, caption))
    edges = [_edge(a, b, reflect_at.get(a.step), termination) for a, b in itertools.pairwise(nodes)]
    rows = [(TOP + r * PITCH_Y + NODE_H // 2 + 4, f"round {r}") for r in range(row + 1)]
    return PathDiagram(LEFT + 3 * PITCH_X + NODE_W + 16, TOP + row * PITCH_Y + NODE_H + 16, nodes, edges, rows)


def _reflection_per_step(path: Sequence[str], reflections: Sequence[Reflection]) -> dict[int, Reflection]:
    """The k-th visit to reflect made the k-th reflection (a reflect that failed made none, and was last)."""
    steps = [step for step, name in enumerate(path) if name == "reflect"]
    return dict(zip(steps, reflections, strict=False))


def _node_style(
    name: str, step: int, path: Sequence[str], reflection: Reflection | None, termination: str
) -> tuple[str, str]:
    failed_here = termination in ("error", "timeout") and _last_work_step(path) == step
    if name == "finalize":
        return f"node node-finalize end-{termination}", termination.replace("_", " ")
    if failed_here:
        return f"node node-{name} node-failed", termination
    if name == "reflect" and reflection is not None:
        return f"node node-reflect decision-{reflection.decision}", _verdict_caption(reflection)
    return f"node node-{name}", f"step {step}"


def _last_work_step(path: Sequence[str]) -> int:
    work = [step for step, name in enumerate(path) if name != "finalize"]
    return work[-1] if work else -1


def _verdict_caption(reflection: Reflection) -> str:
    marks = []
    if reflection.coherence is not None:
        marks.append("coh " + ("✓" if reflection.coherence.passed else "✗"))
    if reflection.consistency is not None:
        marks.append("con " + ("✓" if reflection.consistency.passed else "✗"))
    return " · ".join(marks) or reflection.decision


def _edge(a: SvgNode, b: SvgNode, reflection: Reflection | None, termination: str) -> SvgEdge:
    if b.y > a.y:  # a correction: from the bottom of reflect down-left to the node it sends the answer back to
        label = DECISION_LABELS.get(reflection.decision, "back") if reflection else "back"
        return SvgEdge(a.x + NODE_W // 2, a.y + NODE_H, b.x + NODE_W // 2, b.y, "revise", label)
    kind, label = "next", ""
    if b.name == "finalize":
        kind = reflection.decision if reflection else ("error" if termination in ("error", "timeout") else "next")
        label = kind if kind != "next" else ""
    return SvgEdge(a.x + NODE_W, a.y + NODE_H // 2, b.x, b.y + NODE_H // 2, kind, label)


# --------------------------------------------------------------------------- request parsing


def single_params(query: str) -> dict[str, str]:
    """Query parameters, each at most once; anything malformed is a 400, not a guess."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), errors="strict", max_num_fields=32)
    except ValueError as error:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed query string: {error}") from error
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"query parameter given more than once: {', '.join(repeated)}")
    return {name: values[0].strip() for name, values in parsed.items()}


@dataclass(frozen=True)
class ListQuery:
    """The run list's form, validated: the filter for the store and what to echo back into the form."""

    status: str = ""
    label: str = ""
    termination: str = ""
    since: str = ""
    page: int = 1

    def run_filter(self) -> RunFilter:
        return RunFilter(
            status=self.status or None,
            label=self.label or None,
            termination=self.termination or None,
            since=parse_since(self.since) if self.since else None,
        )

    def link(self, page: int) -> str:
        fields = {k: v for k, v in (("status", self.status), ("label", self.label),
                                    ("termination", self.termination), ("since", self.since)) if v}  # fmt: skip
        return "/?" + urlencode({**fields, "page": page})

    @property
    def filtered(self) -> bool:
        return bool(self.status or self.label or self.termination or self.since)


def parse_list_query(params: dict[str, str]) -> ListQuery:
    status, termination = params.get("status", ""), params.get("termination", "")
    if status and status not in STATUSES:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"status must be one of {', '.join(STATUSES)} (or empty)")
    if termination and termination not in TERMINATIONS:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"termination must be one of {', '.join(TERMINATIONS)} (or empty)")
    query = ListQuery(status, params.get("label", ""), termination, params.get("since", ""), parse_page(params))
    query.run_filter()  # validates `since`
    return query


def parse_page(params: dict[str, str]) -> int:
    raw = params.get("page", "") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"page must be a whole number from 1 to {MAX_PAGE:,}, got {raw!r}")
    return int(raw)


def parse_since(raw: str) -> float:
    """An ISO date or date-time; a value without a zone is this machine's local time, as the list shows."""
    try:
        return datetime.fromisoformat(raw).timestamp()
    except (ValueError, OverflowError, OSError) as error:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"since must be an ISO date such as 2025-06-30 or 2025-06-30T14:00, got {raw!r}"
        ) from error


def parse_step(raw: str) -> int:
    if not re.fullmatch(r"-?\d{1,18}", raw):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"a training step is a whole number, got {raw!r}")
    return int(raw)


# --------------------------------------------------------------------------- formatting helpers


def local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_id(run_id: str) -> str:
    return run_id[:8] if re.fullmatch(r"[0-9a-f]{32}", run_id) else run_id[:24]


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


# --------------------------------------------------------------------------- views


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
    css = resources.files("graphs").joinpath("templates/viewer/viewer.css").read_bytes()
    return Response(HTTPStatus.OK, "text/css; charset=utf-8", css, {"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- routing and the server


@dataclass(frozen=True)
class ViewerContext:
    """What every request shares: where the store is and the tokenizer cache."""

    store_path: Path
    decoder: TokenDecoder


StoreView = Callable[..., Response]
# (literal path segments, or None for a captured one) -> view(store, *captured, params | nothing, context)
ROUTES: list[tuple[tuple[str | None, ...], StoreView, bool]] = [
    ((), view_runs, True),
    (("runs", None), view_run, False),
    (("training",), view_training, False),
    (("training", None, None), view_training_step, False),
    (("images", None), view_image, False),
]


def route(path: str, query: str, context: ViewerContext) -> Response:
    segments = _segments(path)
    if segments == ["static", "viewer.css"]:
        return view_stylesheet()
    if segments == ["favicon.ico"]:  # browsers ask on every page; an empty answer keeps their console clean
        return Response(HTTPStatus.NO_CONTENT, "image/x-icon", b"")
    for pattern, view, takes_params in ROUTES:
        captured = _match(pattern, segments)
        if captured is None:
            continue
        params = single_params(query)
        if not takes_params and params:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"this page takes no query parameters: {', '.join(params)}")
        arguments = [*captured, params] if takes_params else captured
        with TraceStore(context.store_path, readonly=True) as store:  # one connection per request: no sharing
            return view(store, *arguments, context)
    raise HttpError(HTTPStatus.NOT_FOUND, f"no page at {path}")


def _segments(path: str) -> list[str]:
    try:
        return [unquote(s, errors="strict") for s in path.strip("/").split("/") if s] if path.strip("/") else []
    except UnicodeDecodeError as error:
        raise HttpError(HTTPStatus.BAD_REQUEST, "the path is not valid UTF-8") from error


def _match(pattern: tuple[str | None, ...], segments: Sequence[str]) -> list[str] | None:
    if len(pattern) != len(segments):
        return None
    if any(literal is not None and literal != segment for literal, segment in zip(pattern, segments, strict=True)):
        return None
    return [segment for literal, segment in zip(pattern, segments, strict=True) if literal is None]


class ViewerHandler(BaseHTTPRequestHandler):
    """GET and HEAD only; any other method is a 405 (the viewer never changes the store)."""

    server_version = "emo-r3-trace-viewer"
    sys_version = ""
    context: ViewerContext  # set on the subclass that make_server builds

    def do_GET(self) -> None:
        self._answer(self._respond(), send_body=True)

    def do_HEAD(self) -> None:
        self._answer(self._respond(), send_body=False)

    def __getattr__(self, name: str) -> Any:
        """Every other `do_<METHOD>` http.server looks up answers 405 instead of its default 501."""
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        page = _error_page(HTTPStatus.METHOD_NOT_ALLOWED, "the trace viewer is read-only: only GET and HEAD")
        self._answer(Response(page.status, page.content_type, page.body, {"Allow": "GET, HEAD"}), send_body=True)

    def _respond(self) -> Response:
        """The page, or an error page; a bug shows a short message and goes to the log, never a traceback."""
        try:
            try:
                url = urlsplit(self.path)
                return route(url.path, url.query, self.context)
            except HttpError as error:
                return _error_page(error.status, error.message)
            except TraceStoreError as error:
                return _error_page(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        except Exception:
            logger.exception("trace viewer failed on %s", self.path)
        try:
            return _error_page(HTTPStatus.INTERNAL_SERVER_ERROR, "the viewer failed on this page; see its log")
        except Exception:
            return _LAST_RESORT

    def _answer(self, response: Response, *, send_body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in {"Cache-Control": NO_STORE, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def end_headers(self) -> None:
        """Security headers on every response, http.server's own error pages included."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def _error_page(status: HTTPStatus, message: str) -> Response:
    return html("error.html.j2", status, title=f"{status.value} {status.phrase}", status=status, message=message)


_LAST_RESORT = Response(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"trace viewer error\n")


def make_server(
    store_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    model_cache: Path | None = None,
) -> ThreadingHTTPServer:
    """Bind the viewer (port 0 = any free port; read `server.server_address`). Call `serve_forever()` on it.

    The store is opened once here so a wrong path fails now, with the store's message, not on the first page.
    `model_cache` is where `offline:<kind>` models live (for decoding token ids); default as `emo-r3` builds them.
    """
    check_host(host, allow_remote)
    host = host.strip().strip("[]")
    store_path = Path(store_path)
    TraceStore(store_path, readonly=True).close()
    context = ViewerContext(store_path=store_path, decoder=TokenDecoder(model_cache))
    handler = type("BoundViewerHandler", (ViewerHandler,), {"context": context})
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(store_path: Path, *, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False) -> None:
    """Serve until interrupted (Ctrl-C), printing the URL to open."""
    server = make_server(store_path, host=host, port=port, allow_remote=allow_remote)
    print(f"EMO-R3 trace viewer for {Path(store_path).resolve()} at {server_url(server)}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
