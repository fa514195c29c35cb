"""Hugging Face datasets end to end with the tiny model: `emo-r3 eval --dataset hf:org/name` offline from the
datasets cache, `evaluate(graph, datasets.Dataset)` from Python, and the trainer given a `datasets.Dataset`.

The labels are PSEUDO-LABELS for a smoke test of the pipeline, not ground truth.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import datasets
import pytest
from hf_datasets import cache_as_hub_dataset
from repo import EMO_R3
from train_configs import tiny_train_config

from emo_r3.evals.datasets import HFColumns
from emo_r3.evals.evaluation import evaluate
from emo_r3.graphs import EmotionGraph
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.training.config import TrainConfig
from emo_r3.training.local_trainer import LocalTrainer

ROWS = [("astronaut", "Excitement", "first day at work"), ("coffee", "contentment", None),
        ("grace_hopper", "awe", "a portrait"), ("rocket", "boredom", None)]  # fmt: skip
COLUMNS = HFColumns(image="img", label="emotion", text="caption")


@pytest.fixture
def pictures(bundled_images: dict[str, Path]) -> datasets.Dataset:
    """Four bundled pictures as image bytes with string labels; `boredom` is no Mikels-8 label."""
    rows = {
        "img": [bundled_images[name].read_bytes() for name, _, _ in ROWS],
        "emotion": [label for _, label, _ in ROWS],
        "caption": [text for _, _, text in ROWS],
    }
    return datasets.Dataset.from_dict(rows, split=datasets.Split.TEST).cast_column("img", datasets.Image())


def test_eval_of_a_hub_dataset_offline(pictures, tiny_config, tmp_path):
    cache = tmp_path / "hf-cache"
    cache_as_hub_dataset(pictures, cache, "someone/emoset-mini")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}
    out = tmp_path / "eval"
    done = subprocess.run(
        [*EMO_R3, "eval", "--dataset", "hf:someone/emoset-mini:default", "--split", "test", "--config",
         str(tiny_config), "--out", str(out), "--no-traces", "--image-column", "img", "--label-column", "emotion",
         "--text-column", "caption", "--json"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "test:000003: label 'boredom' is not a mikels8 label" in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["failed"], summary["skipped"], summary["metrics"]["n"]) == (0, 1, 3)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted((p["id"], p["label"]) for p in predictions) == [  # written as they finish
        ("test:000000", "excitement"),
        ("test:000001", "contentment"),
        ("test:000002", "awe"),
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "hf:someone/emoset-mini:default" and meta["split"] == "test"


def test_evaluate_a_dataset_from_python_and_resume(pictures, tiny_config, tmp_path):
    graph = EmotionGraph.from_config(tiny_config)
    first = evaluate(graph, pictures, columns=COLUMNS, out=tmp_path / "eval")
    assert [p.id for p in first.predictions] == ["test:000000", "test:000001", "test:000002"]
    assert first.metrics.n == 3 and all(p.status == "ok" for p in first.predictions)
    assert first.skipped == ["test:000003: label 'boredom' is not a mikels8 label"]
    again = evaluate(graph, pictures, columns=COLUMNS, out=tmp_path / "eval")  # all done: nothing runs again
    assert again.predictions == first.predictions and again.metrics == first.metrics


def test_trainer_takes_a_dataset_instead_of_a_data_section(pictures, tmp_path, one_image_dataset):
    config = tiny_train_config(tmp_path / "run", one_image_dataset, mode="shared", steps=1)
    del config["data"]
    dataset = pictures.rename_columns({"img": "image", "emotion": "label"})
    trainer = LocalTrainer(TrainConfig.load(config), dataset=dataset)
    assert [(item.id, item.label) for item in trainer.items] == [
        ("test:000000", "excitement"),
        ("test:000001", "contentment"),
        ("test:000002", "awe"),
    ]
    assert len(trainer.train()) == 1
    with TraceStore(tmp_path / "run" / "traces.sqlite", readonly=True) as store:
        runs = store.list_runs(limit=100)
    # the step's prompt (group_size rollouts of it) came from the dataset passed in, not from the fixture folder
    assert len(runs) == 8 and len({run.query_id for run in runs}) == 1
    assert runs[0].query_id in {"test:000000", "test:000001", "test:000002"}
