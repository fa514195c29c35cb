"""What a layout reader returns, the error for a dataset that cannot be read at all, and table-cell parsing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo_r3.evals.items import EvalItem


class DatasetError(ValueError):
    """A dataset that cannot be read at all (wrong path, wrong layout, unknown split); never a single bad item."""


@dataclass
class Read:
    """What a layout reader found: items with normalised labels, what it skipped, and optional late enrichment.

    `finish` runs only on the items that survive splitting, sampling and image checks, so costly per-item work
    (EmoSet's annotation files) is not paid for the thousands of items a `limit` throws away.
    """

    label_set: str
    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)
    split: str | None = None
    finish: Callable[[EvalItem], None] | None = None


def is_number(text: str) -> bool:
    """Whether a table cell holds a number (tells a header row from a data row)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_text(path: Path) -> str:
    """A dataset's text file (UTF-8, a byte-order mark allowed), or a DatasetError naming it and what to do."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from error
    except OSError as error:
        raise DatasetError(f"{path} cannot be read ({error.strerror or error})") from error


def parse_json(text: str) -> Any:
    """`json.loads`, with nesting deeper than Python's parser goes reported as the ValueError of invalid JSON."""
    try:
        return json.loads(text)
    except RecursionError as error:
        raise ValueError("JSON nested too deeply to read") from error
