"""`hf:` datasets through the real `datasets` library: a `save_to_disk` folder, a parquet folder, a hub name read
offline from the datasets cache, and a `datasets.Dataset` in memory, all read into the same items."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import yaml
from hf_datasets import cache_as_hub_dataset, encoded, mikels_dataset, write_parquet_folder

from emo_r3.evals.datasets import (
    DatasetError,
    HFColumns,
    from_hf_dataset,
    load_dataset,
    parse_dataset_spec,
)
from emo_r3.training.config import TrainConfig
from emo_r3.training.rollouts import TrainingError, training_items


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh datasets cache per test (loading a data folder prepares it into the cache), and no Hub."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def on_disk(tmp_path: Path) -> dict:
    """Six rows: two good ones (bytes; a file path), no image, no label (-1), a truncated JPEG, a good JPEG."""
    png, jpeg = encoded("PNG", 1), encoded("JPEG", 2)
    (tmp_path / "photo.png").write_bytes(encoded("PNG", 3))
    truncated = encoded("JPEG", 4)
    images = [png, str(tmp_path / "photo.png"), None, encoded("PNG", 5), truncated[: len(truncated) // 2], jpeg]
    dataset = mikels_dataset(images, labels=[0, 1, 4, -1, 6, 7], texts=["a party", None, "x", "y", "z", "  "])
    dataset.save_to_disk(str(tmp_path / "saved"))
    write_parquet_folder(dataset, tmp_path / "parquet")
    return {"dataset": dataset, "png": png, "jpeg": jpeg, "file": (tmp_path / "photo.png").read_bytes()}


def image_bytes(image: Path | bytes) -> bytes:
    return image.read_bytes() if isinstance(image, Path) else image


@pytest.mark.parametrize("folder", ["saved", "parquet"])
def test_saved_and_parquet_folders_give_the_same_items(tmp_path: Path, on_disk: dict, folder: str) -> None:
    kind, path = parse_dataset_spec(f"hf:{tmp_path / folder}")
    loaded = load_dataset(kind, path, columns=HFColumns(text="caption"))
    assert (loaded.kind, loaded.split, loaded.label_set, loaded.path) == ("hf", "test", "mikels8", tmp_path / folder)
    assert [(item.id, item.label, item.text) for item in loaded.items] == [
        ("test:000000", "amusement", "a party"),
        ("test:000001", "awe", None),
        ("test:000005", "sadness", None),  # a blank caption is no text
    ]
    # the stored encodings, byte for byte: nothing is decoded and re-encoded on the way
    stored = [image_bytes(item.image) for item in loaded.items]
    assert stored == [on_disk["png"], on_disk["file"], on_disk["jpeg"]]
    assert loaded.skipped[:2] == ["test:000002: the row has no image bytes or path", "test:000003: no label"]
    assert len(loaded.skipped) == 3 and loaded.skipped[2].startswith("test:000004: ")  # the truncated JPEG


def test_custom_columns_string_labels_ids_and_unknown_labels() -> None:
    rows = {
        "img": [encoded("PNG", n) for n in range(5)],
        "emotion": ["Awe", "sad", "boredom", "fear", "anger"],
        "prompt": ["one", "two", "three", "four", "five"],
        "uid": ["b", "a", "c", "d", "a"],
    }
    dataset = datasets.Dataset.from_dict(rows).cast_column("img", datasets.Image())
    columns = HFColumns(image="img", label="emotion", text="prompt", id="uid")
    loaded = from_hf_dataset(dataset, columns=columns)
    assert [(item.id, item.label, item.text) for item in loaded.items] == [
        ("a", "sadness", "two"),
        ("b", "awe", "one"),
        ("d", "fear", "four"),
    ]
    assert loaded.skipped == [
        "c: label 'boredom' is not a mikels8 label",
        "a: duplicate id (an earlier item already uses it)",
    ]
    assert (loaded.path, loaded.split) == ("<memory>", None)


def test_row_ids_without_a_split_and_the_errors_that_say_what_to_do() -> None:
    dataset = datasets.Dataset.from_dict({"image": [encoded("PNG", 0)], "answer": ["joy"]})
    dataset = dataset.cast_column("image", datasets.Image())
    loaded = from_hf_dataset(dataset)  # `answer` is the label column when there is no `label`
    assert [(item.id, item.label_set) for item in loaded.items] == [("row:000000", "emotion6")]
    with pytest.raises(DatasetError, match=r"no image column 'img'.*\['image', 'answer'\]"):
        from_hf_dataset(dataset, columns=HFColumns(image="img"))
    with pytest.raises(DatasetError, match=r"no label column.*--label-column"):
        from_hf_dataset(dataset.rename_column("answer", "feeling"))
    with pytest.raises(DatasetError, match=r"pass one, e\.g\. dataset\['test'\]"):
        from_hf_dataset(datasets.DatasetDict({"test": dataset}))
    with pytest.raises(DatasetError, match="for hf datasets only"):
        load_dataset("fi", Path("."), columns=HFColumns(label="x"))


def test_limit_is_the_same_seeded_sample_in_memory_and_on_disk(tmp_path: Path) -> None:
    dataset = mikels_dataset(
        [encoded("PNG", n) for n in range(12)], labels=[n % 8 for n in range(12)], texts=[None] * 12
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    first = load_dataset("hf", tmp_path / "saved", limit=4, seed=3)
    again = from_hf_dataset(dataset, limit=4, seed=3)
    other = from_hf_dataset(dataset, limit=4, seed=4)
    assert len(first.items) == 4 and [i.id for i in first.items] == [i.id for i in again.items]
    assert [i.id for i in first.items] != [i.id for i in other.items]
    assert {i.id for i in first.items} < {f"test:{n:06d}" for n in range(12)}


def test_hub_name_loads_offline_from_the_datasets_cache(datasets_cache: Path, on_disk: dict) -> None:
    cache_as_hub_dataset(on_disk["dataset"], datasets_cache, "someone/emoset-mini")
    kind, source = parse_dataset_spec("hf:someone/emoset-mini:default")
    assert (kind, source) == ("hf", "someone/emoset-mini:default")
    loaded = load_dataset(kind, source, split="test")
    assert loaded.path == "someone/emoset-mini:default" and [i.id for i in loaded.items] == [
        "test:000000",
        "test:000001",
        "test:000005",
    ]
    assert [i.id for i in load_dataset("hf", "someone/emoset-mini").items] == [i.id for i in loaded.items]
    with pytest.raises(DatasetError, match=r"Available configs in the cache: \['default'\]"):
        load_dataset("hf", "someone/emoset-mini:other")
    with pytest.raises(DatasetError, match=r"someone/absent.*HF_HUB_OFFLINE=1"):
        load_dataset("hf", "someone/absent")
    with pytest.raises(DatasetError, match="no split 'train'"):
        load_dataset("hf", "someone/emoset-mini", split="train")


def test_spec_syntax_tells_local_paths_from_hub_names(tmp_path: Path) -> None:
    assert parse_dataset_spec("hf:someone/emoset-mini") == ("hf", "someone/emoset-mini")
    assert parse_dataset_spec("HF:mnist") == ("hf", "mnist")
    assert parse_dataset_spec("hf:./data/mini") == ("hf", Path("data/mini"))
    assert parse_dataset_spec("hf:/data/a:b") == ("hf", Path("/data/a:b"))  # a path takes no :config
    with pytest.raises(DatasetError, match=r"org/name\[:config\].*starting with /, \./, \.\./ or ~"):
        parse_dataset_spec("hf:a/b/c")
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset("hf", tmp_path / "absent")


def test_training_takes_an_hf_data_section_or_a_dataset(tmp_path: Path, on_disk: dict) -> None:
    config_file = tmp_path / "configs" / "train.yaml"
    config_file.parent.mkdir()
    data = {"kind": "hf", "path": "../saved", "split": "test", "columns": {"text": "caption"}}
    config_file.write_text(yaml.safe_dump({"data": data}))
    config = TrainConfig.load(config_file)
    assert config.data is not None and Path(config.data.path).resolve() == (tmp_path / "saved").resolve()
    assert [item.text for item in training_items(config)] == ["a party", None, None]
    hub = TrainConfig.load({"data": {"kind": "hf", "path": "someone/emoset-mini:default"}})
    assert hub.data is not None and hub.data.path == "someone/emoset-mini:default"  # a name, not a path
    no_data = TrainConfig.load({})
    assert [item.id for item in training_items(no_data, on_disk["dataset"])] == [
        "test:000000",
        "test:000001",
        "test:000005",
    ]
    with pytest.raises(TrainingError, match="add a data section to the config, or pass dataset="):
        training_items(no_data)
