"""Files users hand us in odd encodings or shapes: configs and dataset files either load or give a clear error that
names the file; never a UnicodeDecodeError or RecursionError traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from emo_r3.agents.model_specs import ConfigError
from emo_r3.evals.datasets import DatasetError, load_dataset
from emo_r3.graphs.config import GraphConfig
from emo_r3.training.config import TrainConfig

GRAPH_YAML = "max_rounds: 2\nlabel_set: 'colère,joie'\n"
DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_configs_in_the_encodings_editors_save_load(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "graph.yaml"
    path.write_bytes(GRAPH_YAML.encode(encoding))
    config = GraphConfig.load(path)
    assert config.max_rounds == 2 and config.label_set == "colère,joie"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (GRAPH_YAML.encode("latin-1"), r"is not UTF-8 \(or UTF-16\) text"),
        (DEEP_YAML.encode(), "nests mappings or lists too deeply"),
        (b"key: [unclosed\n", "is not valid YAML"),
        (b"- a list\n- not settings\n", "must hold a mapping of settings"),
    ],
    ids=["latin-1", "5000-deep", "broken", "a-list"],
)
@pytest.mark.parametrize("load", [GraphConfig.load, TrainConfig.load], ids=["graph", "train"])
def test_unusable_configs_are_config_errors_naming_the_file(tmp_path: Path, content: bytes, says: str, load) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=says) as error:
        load(path)
    assert str(path) in str(error.value)


def _emotion6(root: Path, encoding: str) -> Path:
    (root / "images" / "joy").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "joy" / "1.jpg")
    rows = ["[image]\tvalence\tarousal\tanger\tdisgust\tfear\tjoy\tsadness\tsurprise\tneutral  # é", ""]
    rows[1] = "joy/1.jpg\t7\t5\t0\t0\t0\t1\t0\t0\t0"
    (root / "ground_truth.txt").write_bytes("\n".join(rows).encode(encoding))
    return root


def test_a_dataset_text_file_that_is_not_utf8_is_a_dataset_error(tmp_path: Path) -> None:
    assert len(load_dataset("emotion6", _emotion6(tmp_path / "good", "utf-8")).items) == 1
    with pytest.raises(DatasetError, match=r"ground_truth\.txt is not UTF-8 text \(byte \d+: .*iconv"):
        load_dataset("emotion6", _emotion6(tmp_path / "latin", "latin-1"))


def test_an_abstract_csv_that_is_not_utf8_is_a_dataset_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "ABSTRACT_groundTruth.csv").write_bytes("'a.jpg',1,0,0,0,0,0,0,0  # café\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        load_dataset("abstract", tmp_path)


def test_json_nested_too_deeply_is_a_skipped_line_or_a_dataset_error(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(image)
    good = '{"image": "a.jpg", "label": "joy", "candidates": ["joy", "anger"]}'
    (tmp_path / "items.jsonl").write_text(DEEP_JSON + "\n" + good + "\n")
    loaded = load_dataset("vecbench", tmp_path)
    assert len(loaded.items) == 1
    assert any("nested too deeply" in reason for reason in loaded.skipped), loaded.skipped

    emoset = tmp_path / "emoset"
    emoset.mkdir()
    (emoset / "test.json").write_text(DEEP_JSON)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_dataset("emoset", emoset)
