"""Which rows share a prompt's prefill (identical ids and image tensors), and which models decode stepwise."""

from __future__ import annotations

import torch

from emo_r3.agents.backends.transformers.decode_loop import decodes_stepwise
from emo_r3.agents.backends.transformers.shared_prefill import prompt_owners, shared_prefix_length, token_positions


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


def test_positions_count_real_tokens_and_padding_sits_at_zero() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert token_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_models_with_grid_positions_decode_with_generate() -> None:
    assert decodes_stepwise("idefics3") and decodes_stepwise("llama")
    assert not decodes_stepwise("qwen2_5_vl") and not decodes_stepwise("qwen2_vl")


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values)


def test_the_shared_prefix_is_where_all_prompts_agree() -> None:
    assert shared_prefix_length([ids(1, 2, 3, 4, 5), ids(1, 2, 3, 9), ids(1, 2, 3, 4)], image_token_id=None) == 3


def test_the_shared_prefix_stops_before_the_first_image_token() -> None:
    """Image tokens are alike in every prompt, but each stands for that prompt's own pixels."""
    assert shared_prefix_length([ids(1, 2, 7, 7, 3), ids(1, 2, 7, 7, 4)], image_token_id=7) == 2


def test_every_prompt_keeps_a_token_of_its_own() -> None:
    assert shared_prefix_length([ids(1, 2, 3), ids(1, 2, 3, 4)], image_token_id=None) == 2
