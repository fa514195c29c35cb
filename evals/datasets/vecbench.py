"""VECBench-style JSONL: one item per line with an image path, a label and its own list of candidate labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emo_r3.evals.datasets.reading import DatasetError, Read, parse_json, read_text
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import BUILTIN_LABEL_SETS, LabelSet, UnknownLabelSetError, get_label_set

# Field names seen in the wild for each role; the first one present wins.
IMAGE_KEYS = ("image", "image_path", "img", "img_path", "path", "file")
LABEL_KEYS = ("label", "answer", "gt", "ground_truth")
CANDIDATE_KEYS = ("candidates", "options", "choices")
TASK_KEYS = ("task", "task_name", "subtask", "dataset")
ID_KEYS = ("id", "question_id", "qid")
# Label set of a file whose items do not all share the same candidates.
PER_ITEM = "per-item"


def read_vecbench(path: Path, split: str | None) -> Read:
    """Read a `.jsonl` file, or every `.jsonl` in a folder (ids then start with the file's stem).

    Each item's label set is the custom set of its candidates (`get_label_set(candidates).name`); the dataset's
    label set is that name when every item shares it, else `per-item`. VECBench is a test set: `split` must be
    None, `test` or `all`. Image paths are relative to the JSONL file.
    """
    if split not in (None, "test", "all"):
        raise DatasetError(f"VECBench is a test set: split must be 'test' or 'all', not {split!r}")
    files = _files(path)
    items: list[EvalItem] = []
    skipped: list[str] = []
    for file in files:
        prefix = f"{file.stem}/" if len(files) > 1 else ""
        _read_file(file, prefix, items, skipped)
    names = {item.label_set for item in items}
    return Read(label_set=names.pop() if len(names) == 1 else PER_ITEM, items=items, skipped=skipped, split=split)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else []
    if not files:
        raise DatasetError(f"{path}: no .jsonl file here")
    return files


def _read_file(file: Path, prefix: str, items: list[EvalItem], skipped: list[str]) -> None:
    for number, line in enumerate(read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file.name}:{number}"
        try:
            record = parse_json(line)
        except ValueError as error:
            skipped.append(f"{where}: not valid JSON ({error.args[0] if error.args else error})")
            continue
        item = _to_item(record, f"{prefix}{file.stem}:{number:06d}", prefix, file.parent)
        if isinstance(item, str):
            skipped.append(f"{where}: {item}")
        else:
            items.append(item)


def _to_item(record: Any, default_id: str, prefix: str, folder: Path) -> EvalItem | str:
    if not isinstance(record, dict):
        return "expected a JSON object"
    fields = dict(record)
    image, raw_label, raw_candidates = (_pop(fields, keys) for keys in (IMAGE_KEYS, LABEL_KEYS, CANDIDATE_KEYS))
    task, given_id = _pop(fields, TASK_KEYS), _pop(fields, ID_KEYS)
    if not isinstance(image, str) or not image:
        return f"no image path (one of {list(IMAGE_KEYS)})"
    label_set = _candidate_set(raw_candidates)
    if isinstance(label_set, str):
        return label_set
    label = _match(label_set, raw_label)
    if label is None:
        return f"label {raw_label!r} is not one of its candidates {list(label_set.labels)}"
    extra = {key: value for key, value in fields.items() if value is not None}
    if task is not None:
        extra["task"] = task
    return EvalItem(
        id=f"{prefix}{given_id}" if given_id not in (None, "") else default_id,
        image=Path(image) if Path(image).is_absolute() else folder / image,
        label=label,
        label_set=label_set.name,
        candidates=list(label_set.labels),
        extra=extra,
    )


def _pop(fields: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """Remove and return the first present key of `keys` (so what is left over can go to `extra`)."""
    for key in keys:
        if key in fields:
            return fields.pop(key)
    return None


def _candidate_set(raw: Any) -> LabelSet | str:
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        return f"no candidates list (one of {list(CANDIDATE_KEYS)})"
    try:
        return get_label_set(raw)
    except UnknownLabelSetError as error:
        return str(error)


def _match(label_set: LabelSet, raw: Any) -> str | None:
    """The candidate the label names; failing a direct match, the one candidate with the same built-in meaning.

    A label `sadness` against candidates `sad, happy` matches `sad`, because Mikels-8 reads both as sadness.
    """
    if not isinstance(raw, str):
        return None
    direct = label_set.normalize(raw)
    if direct is not None:
        return direct
    for builtin in BUILTIN_LABEL_SETS.values():
        meaning = builtin.normalize(raw)
        if meaning is None:
            continue
        same = [c for c in label_set.labels if builtin.normalize(c) == meaning]
        if len(same) == 1:
            return same[0]
    return None
