"""TrainingRow → OpenRLHF `Experience`, token-exact: the recorded prompt and completion ids as one sequence, the
action mask on the completion, the rollout's logprobs, the advantage, and the row's loss weight.

OpenRLHF's layout: `sequences` (1, T) = prompt + completion ids; `action_mask` (1, T-1) is 1 where token t+1 is a
completion token (position t predicts it); per-token tensors are (1, T-1) on that grid. Image rows carry their
processor outputs (`pixel_values`, ...) in `mm_train_inputs`; the prompt ids keep the expanded image placeholders
as the server returned them, which is where the model puts the image features.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from openrlhf.trainer.ppo_utils.experience import Experience

from emo_r3.training.rows import TrainingRow

LOSS_WEIGHT = "loss_weight"  # Experience.info key: the row's weight in the mini-batch loss (w / D)


def row_experience(row: TrainingRow, loss_weight: float, mm_inputs: Mapping[str, torch.Tensor] | None) -> Experience:
    """One row as a batch of one. `loss_weight` scales every one of its tokens in the loss (see `actors`)."""
    prompt, completion = len(row.prompt_token_ids), len(row.completion_token_ids)
    length = prompt + completion
    action = torch.zeros(1, length - 1, dtype=torch.bool)
    action[0, prompt - 1 :] = True
    rollout = torch.zeros(1, length - 1)
    rollout[0, prompt - 1 :] = torch.tensor(row.rollout_logprobs)
    return Experience(
        sequences=torch.tensor([row.input_ids]),
        attention_mask=torch.ones(1, length, dtype=torch.long),
        action_mask=action,
        rollout_log_probs=rollout,
        advantages=action.float() * row.advantage,
        mm_train_inputs=[dict(mm_inputs) if mm_inputs else None],
        info={LOSS_WEIGHT: torch.tensor([loss_weight])},
    )


def padding_experience(token_id: int) -> Experience:
    """Two tokens, no action, weight 0: DeepSpeed takes a fixed number of micro-batches per optimizer step, and a
    rank with fewer rows makes up the count with these (they add nothing to the loss or the gradient)."""
    return Experience(
        sequences=torch.tensor([[token_id, token_id]]),
        attention_mask=torch.ones(1, 2, dtype=torch.long),
        action_mask=torch.zeros(1, 1, dtype=torch.bool),
        rollout_log_probs=torch.zeros(1, 1),
        advantages=torch.zeros(1, 1),
        action_log_probs=torch.zeros(1, 1),
        base_action_log_probs=torch.zeros(1, 1),
        mm_train_inputs=[None],
        info={LOSS_WEIGHT: torch.zeros(1)},
    )


def image_padding(image_row: Experience) -> Experience:
    """An image row's inputs with no action and weight 0: the vision tower runs (and its gradients, all zero, reach
    the reduction in their usual order) while the loss is unchanged."""
    return Experience(
        sequences=image_row.sequences,
        attention_mask=image_row.attention_mask,
        action_mask=torch.zeros_like(image_row.action_mask),
        rollout_log_probs=torch.zeros_like(image_row.rollout_log_probs),
        advantages=torch.zeros_like(image_row.advantages),
        action_log_probs=torch.zeros_like(image_row.rollout_log_probs),
        base_action_log_probs=torch.zeros_like(image_row.rollout_log_probs),
        mm_train_inputs=image_row.mm_train_inputs,
        info={LOSS_WEIGHT: torch.zeros(1)},
    )


def has_image(experience: Experience) -> bool:
    return any(inputs is not None for inputs in experience.mm_train_inputs or [])


def length(experience: Experience) -> int:
    return int(experience.sequences.shape[1])


def with_logprobs(experience: Experience, old: torch.Tensor, reference: torch.Tensor | None) -> Experience:
    """The experience with the policy's logprobs before the update (π_old) and the reference's (π_ref), on its
    action grid."""
    experience.action_log_probs = old
    experience.base_action_log_probs = reference if reference is not None else torch.zeros_like(old)
    return experience
