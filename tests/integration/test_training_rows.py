"""Trajectories → training rows: recorded ids copied exactly, images reaching the training forward, greedy calls left
out, per-trajectory token weights, and advantages per role stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emo_r3.agents.images import prepare_image
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.trajectory import EmotionQuery, Trajectory
from emo_r3.training.logprobs import MicroBatch, micro_batch_logprobs
from emo_r3.training.rows import RowError, rows_from_trajectory

POLICY_OF = {"perceiver": "shared", "reasoner": "shared", "reflector": "shared"}
ADVANTAGES = {"perceiver": 0.5, "reasoner": 0.5, "reflector": -1.0}


@pytest.fixture(scope="module")
def sampled_run(model_cache: Path, bundled_images: dict[str, Path]) -> tuple[EmotionGraph, Trajectory]:
    """One sampled run of the tiny Idefics3 on a real picture (the reasoner's closed-set fallback runs greedy)."""
    sampling = {"temperature": 1.0, "max_tokens": 6, "seed": 7}
    config = {
        "max_rounds": 0,
        "models": {"default": {"path": "offline:tiny-idefics3"}},
        "roles": {role: {"sampling": sampling} for role in POLICY_OF},
    }
    graph = EmotionGraph.from_config(config, cache_dir=model_cache)
    result = graph.run(EmotionQuery(images=[bundled_images["astronaut"]]))
    assert result.trajectory is not None and result.ok, result.error
    return graph, result.trajectory


def test_rows_copy_the_recorded_ids_and_logprobs(sampled_run: tuple[EmotionGraph, Trajectory]) -> None:
    _, trajectory = sampled_run
    rows = rows_from_trajectory(trajectory, group="q", advantages=ADVANTAGES, policy_of=POLICY_OF)
    assert {row.call_idx for row in rows} == {
        i for i, call in enumerate(trajectory.calls) if call.sampling.temperature > 0
    }
    for row in rows:
        call = trajectory.calls[row.call_idx]
        assert row.prompt_token_ids == call.prompt_token_ids
        assert row.completion_token_ids == call.completion_token_ids
        assert row.rollout_logprobs == call.logprobs
        assert row.advantage == ADVANTAGES[call.role]
        assert [i.sha256 for i in row.images] == [i.sha256 for m in call.messages for i in m.images]
    total = sum(row.token_weight * len(row.completion_token_ids) for row in rows)
    assert total == pytest.approx(1.0)


def test_greedy_fallback_calls_are_not_trained(sampled_run: tuple[EmotionGraph, Trajectory]) -> None:
    _, trajectory = sampled_run
    greedy = [i for i, call in enumerate(trajectory.calls) if call.purpose == "label_choice"]
    assert greedy, "the tiny model never writes a boxed label, so the closed-set fallback must have run"
    rows = rows_from_trajectory(trajectory, group="q", advantages=ADVANTAGES, policy_of=POLICY_OF)
    assert not {row.call_idx for row in rows} & set(greedy)


def test_only_trained_roles_give_rows(sampled_run: tuple[EmotionGraph, Trajectory]) -> None:
    _, trajectory = sampled_run
    rows = rows_from_trajectory(trajectory, group="q", advantages=ADVANTAGES, policy_of={"reflector": "judge"})
    assert rows and {(row.role, row.policy) for row in rows} == {("reflector", "judge")}


def test_image_pixels_reach_the_training_forward(
    sampled_run: tuple[EmotionGraph, Trajectory], bundled_images: dict[str, Path]
) -> None:
    """Trainer logprobs reproduce the rollout's only with the call's own image: swap it and they move."""
    graph, trajectory = sampled_run
    loaded = graph.models["perceiver"].loaded
    rows = rows_from_trajectory(trajectory, group="q", advantages=ADVANTAGES, policy_of=POLICY_OF)
    image_rows = [row for row in rows if row.images]
    assert image_rows
    other = prepare_image(bundled_images["coffee"])
    with torch.no_grad():
        for row in image_rows:
            (own,) = micro_batch_logprobs(loaded, MicroBatch([row]))
            (swapped,) = micro_batch_logprobs(loaded, MicroBatch([row.model_copy(update={"images": (other,)})]))
            np.testing.assert_allclose(own.numpy(), row.rollout_logprobs, atol=1e-4)
            assert (swapped - own).abs().max() > 1e-3, "another image gave the same logprobs: pixels are ignored"


def test_a_call_without_prompt_ids_is_refused(sampled_run: tuple[EmotionGraph, Trajectory]) -> None:
    _, trajectory = sampled_run
    broken = trajectory.model_copy(deep=True)
    broken.calls[0].prompt_token_ids = []
    with pytest.raises(RowError, match="no prompt token ids"):
        rows_from_trajectory(broken, group="q", advantages=ADVANTAGES, policy_of=POLICY_OF)


def test_full_training_in_bf16_keeps_float32_weights_so_small_steps_land(model_cache: Path) -> None:
    """bf16 weights round an AdamW step of lr 2e-6 away for most entries; trained weights stay float32 and compute
    under bf16 autocast, the frozen reference is held in bf16."""
    from emo_r3.graphs.config import GraphConfig
    from emo_r3.training.config import PolicyConfig
    from emo_r3.training.policies import build_policies
    from emo_r3.training.rows import TrainingRow

    graph = GraphConfig.load({"models": {"default": {"path": "offline:tiny-idefics3", "dtype": "bfloat16"}}})
    policy = build_policies(graph, PolicyConfig(mode="shared"), with_reference=True, cache_dir=model_cache).policies[
        "shared"
    ]
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert policy.loaded.autocast_dtype == torch.bfloat16
    assert policy.reference is not None and {p.dtype for p in policy.reference.model.parameters()} == {torch.bfloat16}

    row = TrainingRow(
        trajectory_id="t", call_idx=0, group="g", role="reasoner", policy="shared", prompt_token_ids=[5, 6, 7, 8],
        completion_token_ids=[9, 10, 11], rollout_logprobs=[0.0] * 3, advantage=1.0,
    )  # fmt: skip
    before = {name: p.detach().clone() for name, p in policy.loaded.model.named_parameters()}
    with policy.active() as loaded:
        (logprobs,) = micro_batch_logprobs(loaded, MicroBatch([row]))
        logprobs.sum().backward()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-6, weight_decay=0.0)
    optimizer.step()
    stepped = [(name, p) for name, p in policy.loaded.model.named_parameters() if p.grad is not None]
    moved = sum(int((p.detach() != before[name]).sum()) for name, p in stepped)
    with_grad = sum(int((p.grad != 0).sum()) for _, p in stepped)
    assert moved >= 0.99 * with_grad
