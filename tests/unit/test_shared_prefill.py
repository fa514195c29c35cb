"""Which rows of a batch share a prompt's prefill: identical ids and identical image tensors, on 1-D-position models."""

from __future__ import annotations

import torch

from emo_r3.agents.backends.transformers.shared_prefill import prompt_owners, shares_prefill


def prompt(ids: list[int], pixels: float | None = None) -> dict[str, torch.Tensor]:
    encoded = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if pixels is not None:
        encoded["pixel_values"] = torch.full((1, 1, 3, 4, 4), pixels)
    return encoded


def test_each_prompt_is_owned_by_its_first_identical_prompt() -> None:
    prompts = [prompt([1, 2, 3]), prompt([1, 2, 4]), prompt([1, 2, 3]), prompt([1, 2, 4]), prompt([1, 2, 3])]
    assert prompt_owners(prompts) == [0, 1, 0, 1, 0]


def test_same_tokens_with_other_pixels_are_other_prompts() -> None:
    """Image placeholders tokenize alike whatever the picture: the pixels tell two prompts apart."""
    prompts = [prompt([5, 6], pixels=0.5), prompt([5, 6], pixels=0.25), prompt([5, 6], pixels=0.5)]
    assert prompt_owners(prompts) == [0, 1, 0]


def test_a_longer_prompt_with_the_same_start_is_another_prompt() -> None:
    assert prompt_owners([prompt([1, 2]), prompt([1, 2, 3])]) == [0, 1]


def test_sharing_needs_a_repeat_a_prompt_to_split_and_token_positions() -> None:
    assert shares_prefill("idefics3", [0, 1, 0], prompt_length=12)
    assert shares_prefill("llama", [0, 0], prompt_length=12)
    assert not shares_prefill("idefics3", [0, 1, 2], prompt_length=12)
    assert not shares_prefill("llama", [0, 0], prompt_length=1)
    assert not shares_prefill("qwen2_5_vl", [0, 0], prompt_length=12)
