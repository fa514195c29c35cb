"""Hugging Face `datasets`: a hub dataset, a local copy, or a `datasets.Dataset` in memory, as evaluation items.

Sources (`emo-r3 eval --dataset hf:SOURCE`, or `data: {kind: hf, path: SOURCE}` in a training config):

* `org/name` or `org/name:config` — a dataset on the Hugging Face Hub, through `datasets.load_dataset` and its
  cache (`HF_DATASETS_CACHE`). Offline, set `HF_HUB_OFFLINE=1`: the cached copy is used without trying the network
  (without it, an unreachable hub costs a connection timeout before the cache is used).
* a path — anything starting with `/`, `./`, `../` or `~` (so `hf:./data/mini`, `hf:/data/mini`): a folder written
  by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with `datasets.load_from_disk`), or a folder of data
  files that `datasets.load_dataset(folder)` reads (parquet, e.g. `data/test-00000-of-00001.parquet`; also arrow,
  CSV, JSON lines, an image folder). A path never takes a `:config` suffix.

Split: the one asked for, else `test`, else the only one. Columns (`HFColumns`; `--image-column`, `--label-column`,
`--text-column`, `--id-column` on the command line): the image column is an `Image` feature (bytes and/or a path;
a list of one image is accepted) or a column of file paths or bytes; by default `image`, else `images`. The label
column (default `label`, else `answer`) holds names, or a `ClassLabel`'s indices, which are read as its names;
either way labels are normalised onto the label set inferred from the names. The optional text column becomes the
query's text. Ids come from the id column, else `<split>:<row>` (zero-padded row index, so ids sort in row order).

Images are passed on as the dataset's own encoded bytes (or its file path): they are never decoded here, nor
re-encoded, so what the model sees is exactly the stored image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from emo_r3.evals.datasets.labels import infer_label_set
from emo_r3.evals.datasets.parquet import IMAGE_COLUMNS, LABEL_COLUMNS, one_image
from emo_r3.evals.datasets.reading import DatasetError, Read
from emo_r3.evals.items import EvalItem
from emo_r3.prompts.label_sets import LabelSet

if TYPE_CHECKING:
    import datasets

_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_BATCH_ROWS = 256
INSTALL_HINT = "reading Hugging Face datasets needs the `datasets` library: pip install 'emo-r3[hub]'"


class HFColumns(BaseModel):
    """Which columns of a Hugging Face dataset hold the image, the label, and optionally the text and the item id.

    `None` for image or label: the first of `image`/`images` (`label`/`answer`) that the dataset has."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    label: str | None = None
    text: str | None = None
    id: str | None = None


class HubName(BaseModel):
    """A dataset on the Hugging Face Hub (`org/name`) and its configuration, as `datasets.load_dataset` takes them."""

    name: str
    config: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.config}" if self.config else self.name


def hf_source(source: str | Path, base: Path | None = None) -> Path | HubName:
    """Where an `hf:` dataset comes from: a `Path` is local; text is a local path when it starts with `/`, `./`,
    `../` or `~` (relative ones resolved against `base` when given), else a hub name `org/name[:config]`."""
    if isinstance(source, Path):
        return source.expanduser()
    text = source.strip()
    if text.startswith(_PATH_PREFIXES):
        path = Path(text).expanduser()
        return path if base is None or path.is_absolute() else (base / path).absolute()
    name, _, config = text.partition(":")
    if not name or name.count("/") > 1 or any(c.isspace() for c in name):
        raise DatasetError(
            f"hf dataset {text!r}: expected a hub name org/name[:config] (e.g. someone/emoset-mini:default) or a "
            "local path starting with /, ./, ../ or ~"
        )
    return HubName(name=name, config=config.strip() or None)


def open_hf(source: Path | HubName, split: str | None) -> datasets.Dataset:
    """One split of a hub dataset or a local copy, as a `datasets.Dataset` (memory-mapped, nothing decoded)."""
    datasets = _library()
    if isinstance(source, Path) and not source.is_dir():
        what = "not a folder" if source.exists() else "no such folder"
        raise DatasetError(f"{source}: {what}; an hf path is a save_to_disk folder or a folder of data files")
    # The library raises many error types (missing files, unknown configs or splits, no network and no cache):
    # each becomes a DatasetError that keeps its message.
    try:
        if isinstance(source, Path) and _is_saved(source):
            return _one_split(datasets.load_from_disk(str(source)), split, source)
        path, config = (str(source), None) if isinstance(source, Path) else (source.name, source.config)
        names = datasets.get_dataset_split_names(path, config)
        return datasets.load_dataset(path, config, split=_split_in(split, names, source))
    except DatasetError:  # ours (no such split): already says what to do
        raise
    except Exception as error:
        hint = "" if isinstance(source, Path) else "; offline, it must be in the datasets cache (HF_HUB_OFFLINE=1)"
        raise DatasetError(f"hf dataset {source}: cannot be loaded ({type(error).__name__}: {error}){hint}") from error


def read_hf_dataset(dataset: Any, columns: HFColumns | None = None, folder: Path | None = None) -> Read:
    """Items from a `datasets.Dataset`: labels normalised, unusable rows in `skipped`; `folder` resolves relative
    image paths (a local dataset's folder)."""
    dataset = _check_dataset(dataset)
    columns = columns or HFColumns()
    names = list(dataset.column_names)
    image_column = _column(columns.image, IMAGE_COLUMNS, names, "image")
    label_column = _column(columns.label, LABEL_COLUMNS, names, "label")
    wanted = {"text": columns.text, "id": columns.id}
    for role, column in wanted.items():
        if column is not None and column not in names:
            raise DatasetError(f"no {role} column {column!r} in this dataset: its columns are {names}")
    split = str(dataset.split) if dataset.split else "row"
    rows = _rows(dataset, [image_column, label_column, *(c for c in wanted.values() if c)])
    labels = _label_names(dataset.features[label_column])
    answers = [_answer(row[label_column], labels) for row in rows]
    label_set = infer_label_set(labels or (a for a in answers if isinstance(a, str)))
    width = max(6, len(str(len(rows) - 1)))
    items: list[EvalItem] = []
    skipped: list[str] = []
    for number, (row, answer) in enumerate(zip(rows, answers, strict=True)):
        row_id = f"{split}:{number:0{width}d}" if columns.id is None else row[columns.id]
        text = row[columns.text] if columns.text else None
        item = _to_item(row_id, row[image_column], answer, text, label_set, folder or Path.cwd())
        if isinstance(item, str):
            skipped.append(f"{f'{split}:{number}' if row_id in (None, '') else row_id}: {item}")
        else:
            items.append(item)
    return Read(label_set=label_set.name, items=items, skipped=skipped, split=split if dataset.split else None)


def _library() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise DatasetError(INSTALL_HINT) from error
    return datasets


def _check_dataset(dataset: Any) -> datasets.Dataset:
    datasets = _library()
    if isinstance(dataset, datasets.DatasetDict):
        raise DatasetError(f"a DatasetDict holds several splits {list(dataset)}: pass one, e.g. dataset['test']")
    if not isinstance(dataset, datasets.Dataset):
        raise DatasetError(f"expected a datasets.Dataset, got {type(dataset).__name__} (streaming is not supported)")
    return dataset


def _is_saved(folder: Path) -> bool:
    """A `save_to_disk` folder: a Dataset's `state.json` or a DatasetDict's `dataset_dict.json`."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _one_split(loaded: Any, split: str | None, source: Path) -> datasets.Dataset:
    """The asked split of a saved DatasetDict (default as for the hub), or a saved Dataset if it is that split."""
    if isinstance(loaded, _library().DatasetDict):
        return loaded[_split_in(split, list(loaded), source)]
    if split and loaded.split and str(loaded.split) != split:
        raise DatasetError(f"hf dataset {source}: it holds split {str(loaded.split)!r} only, not {split!r}")
    return loaded


def _split_in(split: str | None, names: list[str], source: Path | HubName) -> str:
    """`split` if the dataset has it; without one, `test`, else the only split."""
    if split is not None and split not in names:
        raise DatasetError(f"hf dataset {source}: no split {split!r}; found splits: {sorted(names)}")
    if split is not None or "test" in names:
        return split or "test"
    if len(names) == 1:
        return names[0]
    raise DatasetError(f"hf dataset {source}: pass --split (no 'test' split); found splits: {sorted(names)}")


def _column(chosen: str | None, defaults: tuple[str, ...], names: list[str], role: str) -> str:
    if chosen is not None:
        if chosen not in names:
            raise DatasetError(f"no {role} column {chosen!r} in this dataset: its columns are {names}")
        return chosen
    found = next((c for c in defaults if c in names), None)
    if found is None:
        raise DatasetError(
            f"no {role} column (looked for {', '.join(defaults)}); its columns are {names}: name it with "
            f"--{role}-column (columns.{role} in a training config)"
        )
    return found


def _rows(dataset: datasets.Dataset, columns: list[str]) -> list[dict[str, Any]]:
    """The rows' raw Arrow values: an Image feature is its stored {bytes, path}, so nothing is decoded."""
    table = dataset.select_columns(list(dict.fromkeys(columns))).with_format("arrow")
    return [row for batch in table.iter(batch_size=_BATCH_ROWS) for row in batch.to_pylist()]


def _label_names(feature: Any) -> list[str] | None:
    """A ClassLabel's names (its stored values are indices into them), else None."""
    return list(feature.names) if isinstance(feature, _library().ClassLabel) else None


def _answer(value: Any, names: list[str] | None) -> str | int | None:
    """The label as text; a ClassLabel index outside its names (-1 = no label) stays an int, to be reported."""
    if names is None:
        return None if value is None else str(value)
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else value


def _to_item(row_id: Any, image: Any, answer: Any, text: Any, label_set: LabelSet, folder: Path) -> EvalItem | str:
    if row_id is None or row_id == "":
        return "the id column is empty"
    label = label_set.normalize(answer) if isinstance(answer, str) else None
    if label is None:
        return "no label" if answer is None or answer == -1 else f"label {answer!r} is not a {label_set.name} label"
    found = one_image(image, folder)
    if isinstance(found, str):
        return found
    data, name = found
    extra = {"image_path": name} if name else {}
    item_text = text if isinstance(text, str) and text.strip() else None
    return EvalItem(id=str(row_id), image=data, label=label, label_set=label_set.name, text=item_text, extra=extra)
