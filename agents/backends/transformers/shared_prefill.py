"""Rows of one batch that carry the same prompt (the samples of one rollout prompt) run its prefill once.

The prompt's forward pass runs over all but its last token, once per distinct prompt; its cache is copied to every
row of that prompt, and `generate` goes on from there with only the last prompt token to process. Each row sees the
same ids at the same positions as with its own prefill, so only float rounding can differ (as with any batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from emo_r3.agents.backends.transformers.batch_inputs import TOKEN_KEYS

# Their positions (3-D rope) come from the image grid, which `generate` works out at its own first step: a cache
# filled outside it would leave the model without them.
GRID_POSITION_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})


def prompt_owners(encoded: Sequence[dict[str, torch.Tensor]]) -> list[int]:
    """For each prompt, the index of the first prompt in `encoded` identical to it (same ids, same image tensors)."""
    owners: list[int] = []
    for index, item in enumerate(encoded):
        owners.append(next((o for o in dict.fromkeys(owners) if _same(encoded[o], item)), index))
    return owners


def shares_prefill(model_type: str, owners: Sequence[int], prompt_length: int) -> bool:
    """Whether sharing pays and is safe: some prompt repeats, and the model's positions follow its tokens."""
    return len(set(owners)) < len(owners) and prompt_length > 1 and model_type not in GRID_POSITION_MODEL_TYPES


def prefilled(model: Any, batch: dict[str, torch.Tensor], owners: Sequence[int]) -> dict[str, Any]:
    """`generate` inputs for `batch` with each distinct prompt's prefill (all but the last token) already run and its
    cache copied to every row of that prompt; image tensors are left out, their tokens being in the cache."""
    distinct = sorted(set(owners))
    rows = torch.tensor(distinct, device=model.device)
    mask = batch["attention_mask"]
    # The positions `generate` gives left-padded rows: counted over real tokens, 0 on padding.
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    head = {key: value[rows][:, :-1] if key in TOKEN_KEYS else value[rows] for key, value in batch.items()}
    output = model(**head, position_ids=positions[rows][:, :-1], use_cache=True, logits_to_keep=1)
    cache = output.past_key_values
    cache.batch_select_indices(torch.tensor([distinct.index(owner) for owner in owners], device=model.device))
    return {**{key: value for key, value in batch.items() if key in TOKEN_KEYS}, "past_key_values": cache}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
