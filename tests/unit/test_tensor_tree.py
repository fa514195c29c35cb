"""training/tensor_tree.py: nested states (an optimizer's state_dict) round-trip exactly through safetensors + JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from emo_r3.training.tensor_tree import load_tree, save_tree


def _round_trip(tree: Any, folder: Path) -> Any:
    save_tree(tree, folder / "t.safetensors", folder / "t.json")
    return load_tree(folder / "t.safetensors", folder / "t.json")


def _assert_identical(got: Any, expected: Any) -> None:
    """Equal values of the same types all the way down; tensors bit-equal with the same dtype and shape."""
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)
    elif isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            _assert_identical(got[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _assert_identical(a, b)
    else:
        assert got == expected


def test_an_adamw_state_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4, dtype=torch.float64))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=0.1)
    for _ in range(2):
        sum(p.square().sum() for p in params).backward()
        optimizer.step()
    state = optimizer.state_dict()

    _assert_identical(_round_trip(state, tmp_path), state)  # int parameter keys, (beta1, beta2) tuples, None


def test_scalars_containers_and_special_tensors_round_trip(tmp_path: Path) -> None:
    tree = {
        "ints": {0: 1, 2: [3, (4, 5)]},
        "flags": (True, False, None),
        "text": "x",
        "inf": float("inf"),
        "scalar": torch.tensor(7.0),
        "bf16": torch.randn(2, 3).to(torch.bfloat16),
        "view": torch.arange(12).reshape(3, 4)[:, 1],  # not contiguous
        "empty": [],
    }
    _assert_identical(_round_trip(tree, tmp_path), tree)


def test_tensors_sharing_memory_are_stored_apart(tmp_path: Path) -> None:
    base = torch.arange(6.0)
    tree = [base, base[:3]]
    _assert_identical(_round_trip(tree, tmp_path), tree)


@pytest.mark.parametrize("value", [{(1, 2): 3}, {"f": lambda: 0}, {"p": Path("x")}], ids=["tuple-key", "code", "path"])
def test_what_is_not_data_is_refused_on_save(tmp_path: Path, value: Any) -> None:
    with pytest.raises(TypeError, match="cannot store"):
        save_tree(value, tmp_path / "t.safetensors", tmp_path / "t.json")
