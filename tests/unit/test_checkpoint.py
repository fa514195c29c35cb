"""training/checkpoint.py: exact round trips (tensors, optimizer, RNG), the `latest` pointer, pruning, and what a
killed save or a damaged checkpoint leaves behind."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_r3.training.checkpoint import (
    LATEST,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)


def _draws() -> tuple[list[float], float, list[float]]:
    return torch.rand(4).tolist(), random.random(), np.random.rand(3).tolist()


def _save(root: Path, step: int, *, keep: int = 2) -> Path:
    policies = {"p": {"w": torch.full((2,), float(step))}}
    return save_checkpoint(root, step, policies=policies, optimizer={"step": step}, extra={}, keep=keep)


def _trained_optimizer(param: torch.nn.Parameter) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW([param], lr=0.1, weight_decay=0.01)
    for target in (1.0, -2.0):
        (param - target).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


def test_round_trip_restores_tensors_optimizer_and_extra(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policies = {"a": {"w": torch.randn(3, 4), "b": torch.randn(4)}, "b": {"w": torch.randn(2, 2, dtype=torch.float64)}}
    param = torch.nn.Parameter(torch.randn(5))
    optimizer = _trained_optimizer(param)
    extra = {"config": {"seed": 3, "run": "demo"}}

    folder = save_checkpoint(tmp_path, 7, policies=policies, optimizer=optimizer.state_dict(), extra=extra)
    saved = load_checkpoint(folder)

    assert folder == tmp_path / "step-00000007"
    assert saved["policies"].keys() == policies.keys()
    for name, tensors in policies.items():
        assert saved["policies"][name].keys() == tensors.keys()
        for key, tensor in tensors.items():
            torch.testing.assert_close(saved["policies"][name][key], tensor, atol=0, rtol=0)
    assert saved["state"]["step"] == 7 and saved["state"]["config"] == extra["config"]
    restored_param = torch.nn.Parameter(param.detach().clone())
    restored = torch.optim.AdamW([restored_param], lr=0.1, weight_decay=0.01)
    restored.load_state_dict(saved["optimizer"])
    for p, opt in ((param, optimizer), (restored_param, restored)):
        (p - 0.5).square().sum().backward()
        opt.step()
    torch.testing.assert_close(restored_param, param, atol=0, rtol=0)


def test_saved_rng_state_replays_torch_python_and_numpy_draws(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    _draws()
    folder = _save(tmp_path, 1)
    expected = _draws()
    _draws()

    saved = load_checkpoint(folder)
    set_rng_state(saved["state"]["rng"], saved["rng"])

    assert _draws() == expected


def test_latest_points_at_the_newest_save(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "never-created") is None
    for step in (1, 2, 3):
        folder = _save(tmp_path, step, keep=5)
        assert latest_checkpoint(tmp_path) == folder
    assert (tmp_path / LATEST).read_text() == "step-00000003"
    assert load_checkpoint(latest_checkpoint(tmp_path))["state"]["step"] == 3


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_pruning_keeps_the_last_keep_checkpoints(tmp_path: Path, keep: int) -> None:
    for step in (5, 10, 15, 20):
        _save(tmp_path, step, keep=keep)
    kept = sorted(p.name for p in tmp_path.glob("step-*"))
    assert kept == [f"step-{step:08d}" for step in (5, 10, 15, 20)][-keep:]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000020"


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    _save(tmp_path, 20, keep=1)
    (tmp_path / LATEST).unlink()

    folder = _save(tmp_path, 10, keep=1)

    assert folder.is_dir()
    assert latest_checkpoint(tmp_path) == folder


def test_a_killed_save_leaves_the_previous_checkpoint_as_latest(tmp_path: Path) -> None:
    _save(tmp_path, 1, keep=1)
    partial = tmp_path / ".partial-step-00000002"
    partial.mkdir()
    (partial / "policies.pt").write_bytes(b"half a file")

    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"
    assert load_checkpoint(latest_checkpoint(tmp_path))["state"]["step"] == 1

    folder = _save(tmp_path, 2, keep=1)
    assert latest_checkpoint(tmp_path) == folder
    assert not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step-00000002"]


def test_latest_naming_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    (tmp_path / LATEST).write_text("step-00000009\n")

    with pytest.raises(CheckpointError, match=r"names step-00000009, which does not exist; remove .*latest"):
        latest_checkpoint(tmp_path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("policy-0.safetensors", _truncate),
        ("optimizer.safetensors", lambda path: path.write_bytes(b"")),
        ("optimizer.json", lambda path: path.write_text('{"pickle": "x"}')),
        ("state.json", Path.unlink),
        ("state.json", lambda path: (path.unlink(), path.mkdir())),
        ("state.json", lambda path: path.write_text("{not json")),
        ("rng.safetensors", lambda path: path.write_bytes(b"garbage")),
    ],
    ids=["truncated", "empty", "unknown-entry", "missing", "a-folder", "not-json", "garbage"],
)
def test_an_unreadable_checkpoint_file_raises_checkpoint_error(tmp_path: Path, name: str, damage) -> None:
    folder = _save(tmp_path, 3)
    damage(folder / name)

    with pytest.raises(CheckpointError, match=f"checkpoint {folder} cannot be read"):
        load_checkpoint(folder)


def test_an_optimizer_structure_naming_a_missing_tensor_raises_checkpoint_error(tmp_path: Path) -> None:
    folder = _save(tmp_path, 3)
    (folder / "optimizer.json").write_text('{"dict": [["exp_avg", {"tensor": "7"}]]}')

    with pytest.raises(CheckpointError, match="cannot be read: KeyError"):
        load_checkpoint(folder)


def test_a_checkpoint_folder_that_is_gone_raises_checkpoint_error(tmp_path: Path) -> None:
    folder = _save(tmp_path, 3)
    shutil.rmtree(folder)

    with pytest.raises(CheckpointError, match="step-00000003"):
        load_checkpoint(folder)


class _RunsCode:
    """Unpickling this would call Path.touch: what a crafted checkpoint would do with a plain `torch.load`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_optimizer_state_is_never_read(tmp_path: Path) -> None:
    """An older checkpoint's optimizer.pt (a pickle) is named as such, not loaded; next to the data files it is
    ignored."""
    folder = _save(tmp_path, 3)
    marker = tmp_path / "pwned"
    torch.save({"state": _RunsCode(marker)}, folder / "optimizer.pt")

    assert load_checkpoint(folder)["optimizer"] == {"step": 3}
    (folder / "optimizer.json").unlink()
    (folder / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"as a pickle \(optimizer.pt, an older format\).*emo-r3 export"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_a_checkpoint_holds_only_safetensors_and_json(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.randn(3))
    folder = save_checkpoint(
        tmp_path, 3, policies={"p": {"w": param.detach()}}, optimizer=_trained_optimizer(param).state_dict(), extra={}
    )
    assert sorted(path.name for path in folder.iterdir()) == [
        "optimizer.json",
        "optimizer.safetensors",
        "policy-0.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    structure = json.loads((folder / "optimizer.json").read_text())
    assert structure["dict"][1][0] == "param_groups"  # the param groups are plain JSON, the moments tensors
