"""What `emo-r3 export` refuses before loading any model (each with a message saying what to give instead), and the
training config a checkpoint keeps so that export can rebuild the policies from the run folder alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from train_configs import tiny_train_config

from emo_r3.training.checkpoint import save_checkpoint
from emo_r3.training.config import TrainConfig
from emo_r3.training.export import ExportError, export_run


def _checkpoint(run_dir: Path, step: int, *, mode: str = "shared", config: bool = True) -> Path:
    extra = {"config": TrainConfig.load(tiny_train_config(run_dir, run_dir, mode=mode)).saved()} if config else {}
    policies = {"shared": {"w": torch.zeros(2)}}
    return save_checkpoint(run_dir / "checkpoints", step, policies=policies, optimizer={}, extra=extra, keep=5)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is not a folder; give the run_dir"):
        export_run(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ExportError, match=r"is not a training run folder \(no checkpoints/\)"):
        export_run(tmp_path / "photos", tmp_path / "out")


def test_a_run_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "traces.sqlite").touch()  # killed before its first checkpoint
    with pytest.raises(ExportError, match="has no checkpoint yet"):
        export_run(tmp_path / "run", tmp_path / "out")
    (tmp_path / "run" / "checkpoints").mkdir()
    with pytest.raises(ExportError, match="has no checkpoint yet"):
        export_run(tmp_path / "run", tmp_path / "out")


def test_a_missing_step_names_the_steps_kept(tmp_path: Path) -> None:
    for step in (2, 4):
        _checkpoint(tmp_path / "run", step)
    with pytest.raises(ExportError, match=r"no checkpoint of step 3; it keeps those of steps \[2, 4\]"):
        export_run(tmp_path / "run", tmp_path / "out", step=3)


def test_a_cluster_run_points_at_its_served_folders(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints" / "driver").mkdir(parents=True)
    with pytest.raises(ExportError, match=r"openrlhf trainer.*DeepSpeed.*served"):
        export_run(tmp_path / "run", tmp_path / "out")


def test_merging_a_full_weight_run_is_refused(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "run", 1, mode="shared")
    with pytest.raises(ExportError, match=r"trained full weights \(policy.mode 'shared'\).*without --merge-lora"):
        export_run(tmp_path / "run", tmp_path / "out", merge_lora=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["a-file-inside", "a-file"])
def test_an_out_that_is_not_new_or_empty_is_refused_and_kept(tmp_path: Path, kind: str) -> None:
    _checkpoint(tmp_path / "run", 1)
    out = tmp_path / "out"
    if kind == "a-file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_run(tmp_path / "run", out)
    assert (out.read_text() if kind == "a-file" else (out / "keep.txt").read_text()) == "mine"


def test_a_checkpoint_without_its_config_is_refused(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "run", 1, config=False)
    with pytest.raises(ExportError, match=f"{folder}/state.json holds no training config"):
        export_run(tmp_path / "run", tmp_path / "out")


def test_the_saved_config_holds_the_graph_inline_with_absolute_model_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph given as a file, naming a model folder relative to the working directory: the checkpoint's copy
    needs neither the file nor that working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    models = {
        "default": {"path": "models/mine"},
        "spare": {"path": "offline:tiny-idefics3"},
        "hub": {"path": "Qwen/Qwen2.5-VL-3B-Instruct"},  # no such folder here: a Hub id, kept as written
    }
    graph = {"max_rounds": 0, "models": models}
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump(graph))
    config = tiny_train_config(tmp_path / "run", tmp_path, mode="shared")
    config = TrainConfig.load({**config, "graph": str(tmp_path / "graph.yaml")})

    saved = json.loads(json.dumps(config.saved()))
    roles = config.graph_config.roles
    (tmp_path / "graph.yaml").unlink()
    monkeypatch.chdir("/")
    rebuilt = TrainConfig.load(saved).graph_config

    assert rebuilt.models["default"].path == str(tmp_path / "models" / "mine")
    assert rebuilt.models["spare"].path == "offline:tiny-idefics3"
    assert rebuilt.models["hub"].path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert rebuilt.max_rounds == 0 and rebuilt.roles == roles
