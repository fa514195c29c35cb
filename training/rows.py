"""Trajectory → TrainingRows: each trainable LLM call as the exact token ids the model saw and produced.

Nothing here renders a template or tokenizes text: prompt ids, completion ids and rollout logprobs are copied from
the `LLMCall` as the backend recorded them; images travel as the `PreparedImage`s the call was made with, so the
trainer can turn them into pixel values with the policy's own processor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from emo_r3.agents.call_record import LLMCall, Role
from emo_r3.agents.images import PreparedImage
from emo_r3.graphs.trajectory import Trajectory
from emo_r3.training.advantages import trajectory_token_weights


class TrainingRow(BaseModel):
    """One call made trainable: ids as served, the sampler's logprobs, its advantage, and where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    trajectory_id: str
    call_idx: int = Field(description="index of the call in its trajectory (and in the trace store)")
    group: str = Field(description="the prompt the trajectory answered (its advantage group)")
    role: Role
    policy: str = Field(description="the model or adapter that trains on this row")
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float
    token_weight: float = Field(1.0, description="loss weight of each completion token (per-trajectory normalisation)")
    images: tuple[PreparedImage, ...] = Field((), exclude=True, description="the call's images, in prompt order")

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_token_ids + self.completion_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.completion_token_ids)


RowKey = tuple[str, int]  # (trajectory id, call index): a row's identity, and its call's in the trace store


def row_key(row: TrainingRow) -> RowKey:
    return (row.trajectory_id, row.call_idx)


class RowError(ValueError):
    """A recorded call that cannot be trained on token-exactly (e.g. a backend that returned no ids)."""


def is_trainable(call: LLMCall) -> bool:
    """A call trains if it succeeded, carries completion ids, and was sampled: a greedy answer (e.g. the reasoner's
    closed-set fallback) is not a draw from the policy, so a policy gradient on it would be biased."""
    sampled = not call.sampling.greedy
    return sampled and call.error is None and call.finish_reason != "error" and bool(call.completion_token_ids)


def row_from_call(
    trajectory: Trajectory, call_idx: int, *, group: str, policy: str, advantage: float, token_weight: float = 1.0
) -> TrainingRow:
    call = trajectory.calls[call_idx]
    if not call.prompt_token_ids:
        raise RowError(
            f"call {call_idx} ({call.role}/{call.purpose}) of trajectory {trajectory.id} has no prompt token ids; "
            "train only on backends that return them (vLLM with return_token_ids, or in-process transformers)"
        )
    if len(call.logprobs) != len(call.completion_token_ids):
        raise RowError(
            f"call {call_idx} of trajectory {trajectory.id} has {len(call.completion_token_ids)} completion ids "
            f"but {len(call.logprobs)} logprobs; the rollout logprobs must be 1:1 with the ids"
        )
    return TrainingRow(
        trajectory_id=trajectory.id,
        call_idx=call_idx,
        group=group,
        role=call.role,
        policy=policy,
        prompt_token_ids=call.prompt_token_ids,
        completion_token_ids=call.completion_token_ids,
        rollout_logprobs=call.logprobs,
        advantage=advantage,
        token_weight=token_weight,
        images=tuple(image for message in call.messages for image in message.images),
    )


def rows_from_trajectory(
    trajectory: Trajectory,
    *,
    group: str,
    advantages: Mapping[Role, float],
    policy_of: Mapping[Role, str],
) -> list[TrainingRow]:
    """The rows of one trajectory: every trainable call of a role in `policy_of`, with its role's advantage.

    Token weight w = 1 / Σ_{trained calls of the trajectory} T_call, so each trajectory's tokens sum to 1 whatever
    number of calls or tokens its roles produced (`trajectory_token_weights`, per trajectory).
    """
    picked = [i for i, call in enumerate(trajectory.calls) if call.role in policy_of and is_trainable(call)]
    counts = [len(trajectory.calls[i].completion_token_ids) for i in picked]
    weights = trajectory_token_weights([0] * len(picked), counts)
    rows = []
    for i, weight in zip(picked, weights, strict=True):
        role = trajectory.calls[i].role
        row = row_from_call(
            trajectory, i, group=group, policy=policy_of[role], advantage=advantages[role], token_weight=float(weight)
        )
        rows.append(row)
    return rows


def rows_by_policy(rows: Sequence[TrainingRow]) -> dict[str, list[TrainingRow]]:
    grouped: dict[str, list[TrainingRow]] = {}
    for row in rows:
        grouped.setdefault(row.policy, []).append(row)
    return grouped
