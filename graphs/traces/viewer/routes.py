"""URL → view: a fixed table of path patterns; every request opens the store read-only on its own connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import unquote

from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.traces.viewer.query_params import single_params
from emo_r3.graphs.traces.viewer.responses import HttpError, Response
from emo_r3.graphs.traces.viewer.views import (
    ViewerContext,
    view_image,
    view_run,
    view_runs,
    view_stylesheet,
    view_training,
    view_training_step,
)

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
