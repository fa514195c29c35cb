"""What a dataset loader yields: one typed evaluation item, and the loaded dataset with what it had to skip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class EvalItem(BaseModel):
    """One image (path or bytes) with its gold label, normalised into `label_set` (a built-in name or custom)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    image: Path | bytes
    label: str
    label_set: str
    text: str | None = None
    candidates: list[str] | None = Field(None, description="per-item label candidates (VECBench)")
    extra: dict[str, Any] = Field(default_factory=dict, description="distribution, valence/arousal, votes, ...")


class LoadedDataset(BaseModel):
    """The items of one split, the label set they use, and every input that was reported and skipped."""

    kind: str
    path: Path | str = Field(description="the file or folder read; for `hf`, a hub name or `<memory>` (a Dataset)")
    split: str | None
    label_set: str
    items: list[EvalItem]
    skipped: list[str] = Field(default_factory=list, description="'<file or line>: <why>' for each skipped input")
