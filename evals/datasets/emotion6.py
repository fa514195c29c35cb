"""Emotion6: `images/<category>/<n>.jpg` and `ground_truth.txt` with valence, arousal and 7 emotion probabilities."""

from __future__ import annotations

from pathlib import Path

from emo_r3.evals.datasets.files import iter_images, relative_id
from emo_r3.evals.datasets.reading import DatasetError, Read, is_number, read_text
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import EKMAN_7

# Column order of the probabilities in ground_truth.txt (after file, valence, arousal).
PROBABILITY_ORDER = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
_COLUMNS = 3 + len(PROBABILITY_ORDER)


def read_emotion6(path: Path, split: str | None) -> Read:
    """Label = the most probable of the 7 emotions (Ekman-7, neutral included).

    A tie for the highest probability is broken by the image's category folder when that category is among the
    tied emotions (it is the emotion the image was collected for); any other tie is skipped with its reason.
    """
    root = path.parent if path.is_file() else path
    truth = path if path.is_file() else root / "ground_truth.txt"
    if not truth.is_file():
        raise DatasetError(f"{root}: no ground_truth.txt (Emotion6: images/<category>/<n>.jpg + ground_truth.txt)")
    images = root / "images" if (root / "images").is_dir() else root
    items: list[EvalItem] = []
    skipped: list[str] = []
    listed: set[Path] = set()
    for number, line in enumerate(read_text(truth).splitlines(), start=1):
        where = f"{truth.name}:{number}"
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) < _COLUMNS:
            cells = line.split()  # some copies use spaces instead of tabs
        if not line.strip() or (number == 1 and not is_number(cells[1] if len(cells) > 1 else "")):
            continue  # blank line or the header row
        parsed = _parse_row(cells, images)
        if isinstance(parsed, str):
            skipped.append(f"{where}: {parsed}")
            continue
        item_id, image, extra = parsed
        listed.add(image)
        tied = _top_labels(extra["distribution"])
        label = _break_tie(tied, item_id)
        if label is None:
            skipped.append(f"{where} ({item_id}): tie between {', '.join(tied)}, not settled by the category folder")
            continue
        items.append(EvalItem(id=item_id, image=image, label=label, label_set=EKMAN_7.name, extra=extra))
    skipped += [f"{relative_id(p, root)}: no row in {truth.name}" for p in iter_images(images) if p not in listed]
    return Read(label_set=EKMAN_7.name, items=items, skipped=skipped)


def _parse_row(cells: list[str], images: Path) -> tuple[str, Path, dict] | str:
    if len(cells) < _COLUMNS:
        return f"expected {_COLUMNS} tab-separated columns, found {len(cells)}"
    name = cells[0].strip("'\"").replace("\\", "/").removeprefix("images/")
    try:
        valence, arousal, *probabilities = (float(cell) for cell in cells[1:_COLUMNS])
    except ValueError:
        return "valence, arousal and probabilities must be numbers"
    image = images / name
    if not image.exists() and (images.parent / name).exists():
        image = images.parent / name
    extra = {
        "distribution": dict(zip(PROBABILITY_ORDER, probabilities, strict=True)),
        "valence": valence,
        "arousal": arousal,
    }
    return name, image, extra


def _top_labels(distribution: dict[str, float]) -> list[str]:
    top = max(distribution.values())
    return [label for label, value in distribution.items() if value == top]


def _break_tie(tied: list[str], item_id: str) -> str | None:
    """The single top emotion; for a tie, the category folder (`anger/12.jpg`) if it is one of the tied."""
    if len(tied) == 1:
        return tied[0]
    category = EKMAN_7.normalize(item_id.split("/")[0]) if "/" in item_id else None
    return category if category in tied else None
