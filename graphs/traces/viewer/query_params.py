"""A page's query string, validated: anything malformed is a 400 with a message, never a guess."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from urllib.parse import parse_qs, urlencode

from emo_r3.graphs.traces.records import RunFilter
from emo_r3.graphs.traces.viewer.responses import HttpError

MAX_PAGE = 10_000_000  # beyond this an OFFSET overflows SQLite's integer; nobody pages that far by hand
TERMINATIONS = ("accepted", "max_rounds", "error", "timeout")
STATUSES = ("ok", "error")


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
