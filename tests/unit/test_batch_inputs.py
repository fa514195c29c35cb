"""Collating prompts encoded one by one: token tensors left-padded, image tensors zero-padded and stacked."""

from __future__ import annotations

import pytest
import torch

from emo_r3.agents.backends.transformers.batch_inputs import collate


def test_token_tensors_are_left_padded_so_prompts_end_together() -> None:
    short = {"input_ids": torch.tensor([[7, 8]]), "attention_mask": torch.tensor([[1, 1]])}
    long = {"input_ids": torch.tensor([[4, 5, 6, 9]]), "attention_mask": torch.tensor([[1, 1, 1, 1]])}
    batch = collate([short, long], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[0, 0, 7, 8], [4, 5, 6, 9]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_image_tensors_stack_with_zero_padding() -> None:
    """Idefics3-style pixel values: a different number of crops per prompt, padded with empty (zero) crops."""
    one = {"input_ids": torch.tensor([[1]]), "pixel_values": torch.ones(1, 1, 3, 2, 2)}
    two = {"input_ids": torch.tensor([[1]]), "pixel_values": torch.full((1, 2, 3, 2, 2), 2.0)}
    pixels = collate([one, two], pad_token_id=0)["pixel_values"]
    assert pixels.shape == (2, 2, 3, 2, 2)
    assert pixels[0, 0].eq(1).all() and pixels[0, 1].eq(0).all() and pixels[1].eq(2).all()


def test_patch_lists_concatenate() -> None:
    """Qwen2-VL-style inputs: flattened patches and one grid row per image, concatenated."""
    one = {
        "input_ids": torch.tensor([[1]]),
        "pixel_values": torch.ones(4, 6),
        "image_grid_thw": torch.tensor([[1, 2, 2]]),
    }
    two = {
        "input_ids": torch.tensor([[1]]),
        "pixel_values": torch.ones(8, 6),
        "image_grid_thw": torch.tensor([[1, 2, 4]]),
    }
    batch = collate([one, two], pad_token_id=0)
    assert batch["pixel_values"].shape == (12, 6)
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]


def test_prompts_with_and_without_images_do_not_mix() -> None:
    with pytest.raises(ValueError, match="same inputs"):
        collate(
            [{"input_ids": torch.tensor([[1]])}, {"input_ids": torch.tensor([[1]]), "pixel_values": torch.ones(1, 2)}],
            0,
        )
