"""EasyR1 / Hugging Face parquet (EmoSet-2k style): columns `images`, `problem`, `answer`, optional extras."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from emo_r3.evals.datasets.labels import infer_label_set
from emo_r3.evals.datasets.reading import DatasetError, Read
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import LabelSet

IMAGE_COLUMNS = ("images", "image")
LABEL_COLUMNS = ("answer", "label")
# Optional columns copied into `extra` as they are (`course_grained` is spelled that way upstream).
EXTRA_COLUMNS = ("problem", "course_grained", "coarse_grained", "intensity")
_IMAGE_MARKER = re.compile(r"\s*<image>\s*")
_BATCH_ROWS = 256


def read_parquet(path: Path, split: str | None) -> Read:
    """Read a parquet file, or one split of a folder (`<split>-*.parquet`, `<split>.parquet`, `data/<split>-*`).

    Without `split`, a folder gives its `test` split, or its only split; the split read is reported back. Rows are
    named `<file stem>:<row>` (zero-padded, so ids sort in file order). The label set is inferred from the answers
    (`infer_label_set`: Mikels-8 unless they clearly come from another set).
    """
    files, split_name = _resolve_files(path, split)
    rows: list[tuple[str, Any, Any, dict[str, Any], Path]] = []
    skipped: list[str] = []
    for file in files:
        _read_file(file, rows, skipped)
    label_set = infer_label_set(str(answer) for _, _, answer, _, _ in rows if answer is not None)
    items = []
    for row_id, images, answer, extra, file in rows:
        item = _to_item(row_id, images, answer, extra, file, label_set)
        if isinstance(item, str):
            skipped.append(f"{row_id}: {item}")
        else:
            items.append(item)
    return Read(label_set=label_set.name, items=items, skipped=skipped, split=split_name)


def _resolve_files(path: Path, split: str | None) -> tuple[list[Path], str | None]:
    if path.is_file():
        return [path], split or _split_of(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such parquet file or folder")
    found = sorted({*path.glob("*.parquet"), *path.glob("data/*.parquet"), *path.glob("*/*.parquet")})
    by_split: dict[str, list[Path]] = {}
    for file in found:
        by_split.setdefault(_split_of(file), []).append(file)
    if not by_split:
        raise DatasetError(f"{path}: no .parquet files here or under data/")
    name = split.strip().lower() if split else ("test" if "test" in by_split else None)
    if name is None and len(by_split) == 1:
        name = next(iter(by_split))
    if name not in by_split:
        want = f"split {name!r}" if name else "a split (no 'test' split, several others)"
        raise DatasetError(f"{path}: pass {want}; found splits: {sorted(by_split)}")
    return by_split[name], name


def _split_of(file: Path) -> str:
    """`test-00000-of-00001.parquet` and `test.parquet` are `test`; `test/0000.parquet` is `test` too."""
    stem = file.stem.split("-")[0].lower()
    if file.parent.name.lower() not in ("data", "") and re.fullmatch(r"\d+|part\d*", stem):
        return file.parent.name.lower()
    return stem


def _read_file(file: Path, rows: list, skipped: list[str]) -> None:
    """Append (id, images, answer, extra, file) for each row; the whole file is skipped if it lacks columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - pyarrow is a declared dependency
        raise DatasetError("reading parquet needs pyarrow: pip install pyarrow") from error
    try:
        handle = pq.ParquetFile(file)
    except Exception as error:  # pyarrow raises its own error types for a broken file
        skipped.append(f"{file.name}: not a readable parquet file ({error})")
        return
    names = set(handle.schema_arrow.names)
    image_column = next((c for c in IMAGE_COLUMNS if c in names), None)
    label_column = next((c for c in LABEL_COLUMNS if c in names), None)
    if image_column is None or label_column is None:
        skipped.append(f"{file.name}: needs an `images` and an `answer` column, has {sorted(names)}")
        return
    extra_columns = [c for c in EXTRA_COLUMNS if c in names]
    number = 0
    for batch in handle.iter_batches(batch_size=_BATCH_ROWS, columns=[image_column, label_column, *extra_columns]):
        for row in batch.to_pylist():
            extra = {c: _clean_extra(c, row[c]) for c in extra_columns if row[c] is not None}
            rows.append((f"{file.stem}:{number:06d}", row[image_column], row[label_column], extra, file))
            number += 1


def _clean_extra(column: str, value: Any) -> Any:
    """`problem` is the training prompt: kept for reference with its `<image>` placeholders removed."""
    if column == "problem" and isinstance(value, str):
        return _IMAGE_MARKER.sub(" ", value).strip()
    return value


def _to_item(
    row_id: str, images: Any, answer: Any, extra: dict[str, Any], file: Path, label_set: LabelSet
) -> EvalItem | str:
    label = label_set.normalize(str(answer)) if answer is not None else None
    if label is None:
        return f"answer {answer!r} is not a {label_set.name} label"
    image = one_image(images, file.parent)
    if isinstance(image, str):
        return image
    image_data, image_name = image
    if image_name:
        extra["image_path"] = image_name
    return EvalItem(id=row_id, image=image_data, label=label, label_set=label_set.name, extra=extra)


def one_image(images: Any, folder: Path) -> tuple[Path | bytes, str | None] | str:
    """The row's image as bytes (preferred) or a path relative to the parquet file; a reason if there is not one."""
    if isinstance(images, list | tuple):
        if len(images) != 1:
            return f"expected one image per row, found {len(images)}"
        images = images[0]
    if isinstance(images, dict):
        data, name = images.get("bytes"), images.get("path")
    elif isinstance(images, bytes | bytearray):
        data, name = bytes(images), None
    else:
        data, name = None, images if isinstance(images, str) else None
    if data:
        return bytes(data), name
    if name:
        candidate = Path(name)
        return (candidate if candidate.is_absolute() else folder / candidate), name
    return "the row has no image bytes or path"
