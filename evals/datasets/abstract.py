"""Abstract paintings (Machajdik & Hanbury): images + `ABSTRACT_groundTruth.csv` of Mikels-8 vote counts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from emo_r3.evals.datasets.files import iter_images, relative_id
from emo_r3.evals.datasets.reading import DatasetError, Read, is_number, read_text
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import MIKELS_8

# Vote columns after the file name when the CSV has no usable header.
VOTE_ORDER = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
GROUND_TRUTH = "ABSTRACT_groundTruth.csv"


def read_abstract(path: Path, split: str | None) -> Read:
    """Label = the emotion with the most votes. A tie for the most votes is skipped with a reason.

    Ties are left out rather than broken: any rule (first column, alphabetical) would invent a gold label that the
    raters did not give. Images are found by the CSV's name, case-insensitively, anywhere under the folder.
    """
    root, csv_file = _locate(path)
    rows = _read_rows(csv_file)
    header = _vote_columns(rows[0]) if rows else None
    body = rows[1:] if header else rows
    columns = header or VOTE_ORDER
    by_name = _image_index(root)
    items: list[EvalItem] = []
    skipped: list[str] = []
    listed: set[Path] = set()
    for number, row in enumerate(body, start=2 if header else 1):
        where = f"{csv_file.name}:{number}"
        if not any(row):
            continue
        name = row[0].replace("\\", "/")
        image = _find(root, name, by_name)
        listed.add(image)
        votes = _parse_votes(row[1:], columns)
        if isinstance(votes, str):
            skipped.append(f"{where} ({name}): {votes}")
            continue
        top = _most_voted(votes)
        if len(top) != 1:
            reason = f"tie between {', '.join(top)} ({votes[top[0]]:g} votes each)" if top else "no votes"
            skipped.append(f"{where} ({name}): {reason}")
            continue
        label = top[0]
        items.append(EvalItem(id=name, image=image, label=label, label_set=MIKELS_8.name, extra={"votes": votes}))
    skipped += [f"{relative_id(p, root)}: no row in {csv_file.name}" for p in iter_images(root) if p not in listed]
    return Read(label_set=MIKELS_8.name, items=items, skipped=skipped)


def _locate(path: Path) -> tuple[Path, Path]:
    if path.is_file():
        return path.parent, path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    exact = path / GROUND_TRUTH
    if exact.is_file():
        return path, exact
    found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower() == GROUND_TRUTH.lower())
    found = found or sorted(p for p in path.glob("*.csv") if "groundtruth" in p.name.lower().replace("_", ""))
    if not found:
        raise DatasetError(f"{path}: no {GROUND_TRUTH} (Abstract layout: images + {GROUND_TRUTH})")
    return path, found[0]


def _read_rows(csv_file: Path) -> list[list[str]]:
    """CSV rows with quotes (single or double) and padding stripped from every cell."""
    rows = list(csv.reader(io.StringIO(read_text(csv_file), newline=""), skipinitialspace=True))
    return [[cell.strip().strip("'\"").strip() for cell in row] for row in rows]


def _vote_columns(header: list[str]) -> tuple[str, ...] | None:
    """The label of each vote column if the first row is a header of emotion names (`Content`, `Sad`), else None."""
    cells = [cell for cell in header[1:] if cell]
    if not cells or all(is_number(cell) for cell in cells):
        return None
    labels = [label for label in (MIKELS_8.normalize(cell) for cell in cells) if label]
    if len(labels) != len(cells) or len(set(labels)) != len(labels):
        raise DatasetError(f"header {header} does not name each Mikels-8 emotion once")
    return tuple(labels)


def _parse_votes(cells: list[str], columns: tuple[str, ...]) -> dict[str, float] | str:
    values = [cell for cell in cells if cell != ""]
    if len(values) != len(columns):
        return f"expected {len(columns)} vote counts, found {len(values)}"
    try:
        counts = [float(value) for value in values]
    except ValueError:
        return "vote counts must be numbers"
    return {label: int(count) if count.is_integer() else count for label, count in zip(columns, counts, strict=True)}


def _most_voted(votes: dict[str, float]) -> list[str]:
    """The labels with the most votes: one for a clear majority, several for a tie, none if nobody voted."""
    top = max(votes.values())
    return [label for label, count in votes.items() if count == top] if top > 0 else []


def _image_index(root: Path) -> dict[str, Path]:
    """Lower-case file name -> path, first in sorted order: the CSV and the files disagree on case (`.JPG`)."""
    index: dict[str, Path] = {}
    for path in iter_images(root):
        index.setdefault(path.name.lower(), path)
        index.setdefault(relative_id(path, root).lower(), path)
    return index


def _find(root: Path, name: str, by_name: dict[str, Path]) -> Path:
    exact = root / name
    if exact.is_file():
        return exact
    return by_name.get(name.lower()) or by_name.get(Path(name).name.lower()) or exact
