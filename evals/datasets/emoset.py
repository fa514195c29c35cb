"""EmoSet-118K: `info.json`, `<split>.json` lists of `[emotion, image_id, image_relpath, annotation_relpath]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emo_r3.evals.datasets.reading import DatasetError, Read, parse_json, read_text
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import MIKELS_8

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "dev": "val"}
# The per-image attributes EmoSet annotates; an attribute the annotators left empty is absent from the file.
ATTRIBUTES = ("brightness", "colorfulness", "scene", "object", "facial_expression", "human_action")


def read_emoset(path: Path, split: str | None) -> Read:
    """Read one split (default `test`); `path` is the dataset root, or one split file such as `test.json`."""
    root, split_name = _root_and_split(path, split)
    index_to_label = _label_index(root)
    split_file = root / f"{split_name}.json"
    entries = _load_json(split_file)
    if not isinstance(entries, list):
        raise DatasetError(f"{split_file}: expected a JSON list of [emotion, image_id, image, annotation] entries")
    items: list[EvalItem] = []
    skipped: list[str] = []
    annotations: dict[str, Path] = {}
    for number, entry in enumerate(entries):
        where = f"{split_file.name}[{number}]"
        parsed = _parse_entry(entry, index_to_label)
        if isinstance(parsed, str):
            skipped.append(f"{where}: {parsed}")
            continue
        label, image_id, image_rel, annotation_rel = parsed
        items.append(EvalItem(id=image_id, image=root / image_rel, label=label, label_set=MIKELS_8.name))
        if annotation_rel:
            annotations[image_id] = root / annotation_rel
    return Read(
        label_set=MIKELS_8.name,
        items=items,
        skipped=skipped,
        split=split_name,
        finish=lambda item: _add_attributes(item, annotations.get(item.id)),
    )


def _root_and_split(path: Path, split: str | None) -> tuple[Path, str]:
    if path.is_file():
        if split is None and path.stem in SPLITS:
            return path.parent, path.stem
        path = path.parent
    name = (split or "test").strip().lower()
    name = _SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise DatasetError(f"EmoSet has no split {split!r}: use one of {list(SPLITS)}")
    if not (path / f"{name}.json").is_file():
        found = [s for s in SPLITS if (path / f"{s}.json").is_file()]
        raise DatasetError(f"{path}: no {name}.json here (EmoSet split files found: {found or 'none'})")
    return path, name


def _label_index(root: Path) -> dict[int, str]:
    """Index -> Mikels-8 label from `info.json`, which is either flat or EmoSet's `{"emotion": {"label2idx"}}`.

    Checking it up front catches a wrong dataset early: every label it lists must be a Mikels-8 emotion.
    """
    info_file = root / "info.json"
    if not info_file.is_file():
        return {}
    info = _load_json(info_file)
    table = info.get("emotion", info) if isinstance(info, dict) else None
    table = table.get("label2idx", table) if isinstance(table, dict) else None
    if not isinstance(table, dict):
        raise DatasetError(f"{info_file}: expected a label -> index mapping")
    out: dict[int, str] = {}
    for name, index in table.items():
        label = MIKELS_8.normalize(str(name))
        if label is None:
            raise DatasetError(f"{info_file}: {name!r} is not a Mikels-8 emotion; is this EmoSet?")
        if isinstance(index, int):
            out[index] = label
    return out


def _parse_entry(entry: Any, index_to_label: dict[int, str]) -> tuple[str, str, str, str | None] | str:
    """The entry's (label, image id, image path, annotation path), or why it is skipped."""
    if not isinstance(entry, list | tuple) or len(entry) < 3:
        return "expected [emotion, image_id, image_relpath, annotation_relpath]"
    emotion, image_id, image_rel = entry[0], entry[1], entry[2]
    annotation_rel = entry[3] if len(entry) > 3 and isinstance(entry[3], str) and entry[3] else None
    if isinstance(emotion, int) and not isinstance(emotion, bool):
        label = index_to_label.get(emotion)
    else:
        label = MIKELS_8.normalize(str(emotion))
    if label is None:
        return f"emotion {emotion!r} is not a mikels8 label"
    if not isinstance(image_rel, str) or not image_rel:
        return "no image path"
    image_rel = image_rel.replace("\\", "/")
    item_id = str(image_id) if image_id not in (None, "") else image_rel
    return label, item_id, image_rel, annotation_rel.replace("\\", "/") if annotation_rel else None


def _add_attributes(item: EvalItem, annotation: Path | None) -> None:
    """Copy EmoSet's attributes into `extra`; a missing or broken annotation only means fewer attributes."""
    if annotation is None:
        return
    try:
        data = parse_json(annotation.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON, or nested too deeply
        return
    if isinstance(data, dict):
        item.extra.update({key: data[key] for key in ATTRIBUTES if key in data})


def _load_json(path: Path) -> Any:
    try:
        return parse_json(read_text(path))
    except ValueError as error:
        raise DatasetError(f"{path}: cannot read JSON ({error})") from error
