"""What a layout reader returns, the error for a dataset that cannot be read at all, and table-cell parsing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
