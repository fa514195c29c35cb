"""The prefill of a batch, sharing what rows have in common: a whole prompt, or the text in front of the images.

Rows with the same prompt (the samples of one rollout prompt) need its forward pass only once: its cache and first
logits are copied to each of them. Distinct prompts that open alike (one role's system prompt, before each row's own
image) run that shared prefix once, then their own suffixes, left-padded after it, on top of its cache. Each row sees
the same ids at the same positions as with its own prefill, so only float rounding can differ (as with any batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emo_r3.agents.backends.transformers.batch_inputs import TOKEN_KEYS, collate

# A shorter common prefix saves less than its extra forward pass costs.
MIN_SHARED_PREFIX = 16
# Prompts carrying other per-token inputs (token types) are prefilled whole.
PLAIN_TOKEN_KEYS = frozenset({"input_ids", "attention_mask"})


@dataclass
class Prefilled:
    """Every row's prompt run: logits for its first generated token, its cache, and the mask over that cache."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor


def prompt_owners(encoded: Sequence[dict[str, torch.Tensor]]) -> list[int]:
    """For each prompt, the index of the first prompt in `encoded` identical to it (same ids, same image tensors)."""
    owners: list[int] = []
    for index, item in enumerate(encoded):
        owners.append(next((o for o in dict.fromkeys(owners) if _same(encoded[o], item)), index))
    return owners


def token_positions(mask: torch.Tensor) -> torch.Tensor:
    """The positions `generate` gives left-padded rows: counted over real tokens, 0 on padding."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def shared_prefill(model: Any, batch: dict[str, torch.Tensor], owners: Sequence[int]) -> Prefilled:
    """The prefill of every row of `batch`, running each distinct prompt (`owners` from `prompt_owners`) once and
    their common text prefix once."""
    distinct = sorted(set(owners))
    head = {key: value[torch.tensor(distinct, device=model.device)] for key, value in batch.items()}
    prompts = [ids[mask.bool()] for ids, mask in zip(head["input_ids"], head["attention_mask"], strict=True)]
    prefix = _cut(model, head, prompts) if len(distinct) > 1 else 0
    if prefix >= MIN_SHARED_PREFIX:
        prefilled = _prefill_after_prefix(model, head, prompts, prefix)
    else:
        mask = head["attention_mask"]
        output = model(**head, position_ids=token_positions(mask), use_cache=True, logits_to_keep=1)
        prefilled = Prefilled(output.logits[:, -1], output.past_key_values, mask)
    if len(distinct) < len(owners):
        copies = torch.tensor([distinct.index(owner) for owner in owners], device=model.device)
        prefilled.cache.batch_select_indices(copies)
        prefilled = Prefilled(prefilled.logits[copies], prefilled.cache, prefilled.mask[copies])
    return prefilled


def shared_prefix_length(prompts: Sequence[torch.Tensor], image_token_id: int | None) -> int:
    """How many leading ids all `prompts` share, stopping before the first image token (each row's own pixels
    follow it) and leaving every prompt at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    stacked = torch.stack([p[:shortest] for p in prompts])
    differs = (stacked != stacked[0]).any(dim=0)
    if image_token_id is not None:
        differs |= (stacked == image_token_id).any(dim=0)
    first_difference = int(differs.nonzero()[0]) if differs.any() else shortest
    return min(first_difference, shortest - 1)


def _cut(model: Any, head: dict[str, torch.Tensor], prompts: Sequence[torch.Tensor]) -> int:
    """The length of the opening the prompts share, or 0 when they cannot be cut there: they carry per-token inputs
    beyond ids and mask, or images but no known image token to stop before."""
    image_token_id = getattr(model.config, "image_token_id", None)
    if (head.keys() & TOKEN_KEYS) - PLAIN_TOKEN_KEYS or (head.keys() - TOKEN_KEYS and image_token_id is None):
        return 0
    return shared_prefix_length(prompts, image_token_id)


def _prefill_after_prefix(
    model: Any, head: dict[str, torch.Tensor], prompts: Sequence[torch.Tensor], prefix: int
) -> Prefilled:
    """Run the shared prefix once, then each prompt's suffix (left-padded after the prefix, with its images)."""
    device = model.device
    shared = prompts[0][None, :prefix]
    ones = torch.ones_like(shared)
    opening = model(
        input_ids=shared, attention_mask=ones, position_ids=token_positions(ones), use_cache=True, logits_to_keep=1
    )
    cache = opening.past_key_values
    cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=device))
    suffixes = [{"input_ids": p[None, prefix:], "attention_mask": torch.ones_like(p[None, prefix:])} for p in prompts]
    # Padding reuses a prefix token: a pad id that happened to be the image token would take an image's place.
    suffix = collate(suffixes, pad_token_id=int(shared[0, 0]))
    mask = torch.cat([ones.expand(len(prompts), -1), suffix["attention_mask"]], dim=1)
    images = {key: value for key, value in head.items() if key not in PLAIN_TOKEN_KEYS}
    output = model(
        input_ids=suffix["input_ids"], attention_mask=mask, position_ids=token_positions(mask)[:, prefix:],
        past_key_values=cache, use_cache=True, logits_to_keep=1, **images,
    )  # fmt: skip
    return Prefilled(output.logits[:, -1], output.past_key_values, mask)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
