"""A nested state (an optimizer's `state_dict()`: dicts, lists, tuples, numbers, strings, tensors) as data only: the
tensors in one safetensors file, everything else as plain JSON naming them, so reading it back never runs code.

The JSON keeps what JSON alone would lose, so the round trip is exact: a dict is `{"dict": [[key, value], ...]}`
(integer keys, such as an optimizer's parameter indices, stay integers), a tuple `{"tuple": [...]}`, a tensor
`{"tensor": NAME}`; numbers, strings, booleans, None and lists are themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

SCALARS = (bool, int, float, str, type(None))


def save_tree(tree: Any, tensors_path: Path, json_path: Path) -> None:
    """Write `tree`'s tensors to `tensors_path` and its structure to `json_path`."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors)
    save_file(tensors, tensors_path)
    json_path.write_text(json.dumps(structure))


def load_tree(tensors_path: Path, json_path: Path, device: str | torch.device = "cpu") -> Any:
    """The tree `save_tree` wrote, its tensors on `device`. Malformed files raise ValueError, KeyError or OSError."""
    tensors = load_file(tensors_path, device=str(device))
    return _decode(json.loads(json_path.read_text()), tensors)


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().contiguous().clone()  # clone: safetensors refuses tensors sharing memory
        return {"tensor": name}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, int | str):
                raise TypeError(f"cannot store a dict key of type {type(key).__name__} ({key!r}) as JSON")
        return {"dict": [[key, _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if isinstance(value, SCALARS):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} as data (tensors, numbers, strings and containers only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, SCALARS):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"unexpected entry in a stored state: {value!r:.80}")
    [(kind, content)] = value.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "tuple":
        return tuple(_decode(item, tensors) for item in content)
    if kind == "dict":
        return {key: _decode(item, tensors) for key, item in content}
    raise ValueError(f"unexpected entry in a stored state: {kind!r}")
