"""What a view returns: a page rendered by Jinja with autoescaping (data is never markup), or an error page."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import jinja2

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("emo_r3.graphs.traces.viewer", "templates"),
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
