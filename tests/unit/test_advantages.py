"""Advantage estimators on hand-computed cases, and the broadcast of trajectory advantages to calls and tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emo_r3.training.advantages import (
    EPS,
    ESTIMATORS,
    broadcast,
    dr_grpo,
    group_keys,
    grpo,
    reinforce_baseline,
    rloo,
    role_advantages,
    trajectory_token_weights,
)

# Group "a": rewards 1, 2, 3 (mean 2, unbiased std 1); group "b": 0, 4 (mean 2, unbiased std √8); "c": a lone 5.
REWARDS = [1.0, 0.0, 2.0, 5.0, 3.0, 4.0]
GROUPS = ["a", "b", "a", "c", "a", "b"]


def test_grpo_hand_computed() -> None:
    s8 = math.sqrt(8)
    expected = [-1 / (1 + EPS), -2 / (s8 + EPS), 0.0, 0.0, 1 / (1 + EPS), 2 / (s8 + EPS)]
    np.testing.assert_allclose(grpo(REWARDS, GROUPS), expected, rtol=1e-12, atol=1e-12)


def test_dr_grpo_hand_computed() -> None:
    np.testing.assert_allclose(dr_grpo(REWARDS, GROUPS), [-1, -2, 0, 0, 1, 2])


def test_rloo_hand_computed() -> None:
    # a: 1 − (2+3)/2 = −1.5, 2 − (1+3)/2 = 0, 3 − (1+2)/2 = 1.5; b: 0 − 4 = −4, 4 − 0 = 4; c alone: 0.
    np.testing.assert_allclose(rloo(REWARDS, GROUPS), [-1.5, -4, 0, 0, 1.5, 4])


def test_reinforce_baseline_hand_computed() -> None:
    # centred: −1, −2, 0, 0, 1, 2; batch unbiased std = √((1+4+0+0+1+4)/5) = √2.
    expected = np.array([-1, -2, 0, 0, 1, 2]) / (math.sqrt(2) + EPS)
    np.testing.assert_allclose(reinforce_baseline(REWARDS, GROUPS), expected, rtol=1e-12)


@pytest.mark.parametrize("estimator", [grpo, dr_grpo, rloo, reinforce_baseline])
def test_group_of_one_gets_zero(estimator) -> None:
    assert estimator([0.7], ["only"]).tolist() == [0.0]


@pytest.mark.parametrize("estimator", [grpo, dr_grpo, rloo, reinforce_baseline])
def test_constant_reward_group_gets_zero(estimator) -> None:
    adv = estimator([0.9, 0.9, 0.9, 0.2, 0.2], ["p", "p", "p", "q", "q"])
    np.testing.assert_array_equal(adv, np.zeros(5))


@pytest.mark.parametrize("estimator", [grpo, dr_grpo, rloo])
def test_group_advantages_sum_to_zero(estimator) -> None:
    adv = estimator(REWARDS, GROUPS)
    for g in set(GROUPS):
        assert abs(sum(a for a, k in zip(adv, GROUPS, strict=True) if k == g)) < 1e-9


def test_group_keys() -> None:
    assert group_keys(["q1", "q2"]) == ["q1", "q2"]
    keys = group_keys(["q1", "q1", "q1"], ["reasoner", "reflector", "reasoner"])
    assert keys == [("q1", "reasoner"), ("q1", "reflector"), ("q1", "reasoner")]
    np.testing.assert_allclose(dr_grpo([1.0, 5.0, 3.0], keys), [-1, 0, 1])
    with pytest.raises(ValueError):
        group_keys(["q1"], ["reasoner", "reflector"])


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        grpo([1.0, 2.0], ["a"])


def test_broadcast() -> None:
    adv = broadcast([0.5, -1.0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(adv, [0.5, 0.5, 0.5, -1.0, -1.0])
    with pytest.raises(IndexError):
        broadcast([0.5], [0, 1])


def test_token_weights_sum_to_one_per_trajectory() -> None:
    index = [0, 0, 0, 1, 1, 2]
    counts = [10, 30, 60, 5, 0, 7]
    w = trajectory_token_weights(index, counts)
    np.testing.assert_allclose(w, [0.01, 0.01, 0.01, 0.2, 0.0, 1 / 7])
    per_traj = np.bincount(index, weights=w * np.asarray(counts))
    np.testing.assert_allclose(per_traj, [1.0, 1.0, 1.0])


def test_token_weights_a_talkative_role_does_not_weigh_more() -> None:
    # trajectory 0: a reflector speaking 1000 tokens; trajectory 1: 10 tokens. Each still totals 1.
    w = trajectory_token_weights([0, 0, 1], [1000, 10, 10])
    np.testing.assert_allclose(np.bincount([0, 0, 1], weights=w * [1000, 10, 10]), [1.0, 1.0])


def test_token_weights_empty_trajectory_and_errors() -> None:
    assert trajectory_token_weights([0, 1], [4, 0]).tolist() == [0.25, 0.0]
    assert trajectory_token_weights([], []).size == 0
    with pytest.raises(ValueError):
        trajectory_token_weights([0], [1, 2])
    with pytest.raises(ValueError):
        trajectory_token_weights([0], [-1])


def test_role_advantages_group_by_prompt_and_reward_stream() -> None:
    rewards = [
        {"reasoner": 1.0, "reflector": 0.0},
        {"reasoner": 0.0, "reflector": 1.0},
        {"reasoner": 0.5, "reflector": 0.5},
    ]
    prompts = ["a", "a", "b"]
    streams = {"reasoner": "trajectory", "reflector": "reflector"}
    advantages = role_advantages(rewards, prompts, estimator="grpo", streams=streams)
    expected_reasoner = grpo([1.0, 0.0], ["a", "a"])
    assert [a["reasoner"] for a in advantages[:2]] == pytest.approx(list(expected_reasoner))
    assert [a["reflector"] for a in advantages[:2]] == pytest.approx(list(-expected_reasoner))
    assert advantages[2] == {"reasoner": 0.0, "reflector": 0.0}  # a group of one has no baseline to beat


def test_roles_sharing_a_reward_count_once_in_their_group() -> None:
    """Perceiver and reasoner share the trajectory reward: their advantage is plain GRPO over the trajectories."""
    rewards = [{"perceiver": r, "reasoner": r, "reflector": 1 - r} for r in (1.0, 0.0, 0.0, 1.0, 1.0)]
    streams = {"perceiver": "trajectory", "reasoner": "trajectory", "reflector": "reflector"}
    advantages = role_advantages(rewards, ["a"] * 5, estimator="grpo", streams=streams)
    expected = grpo([1.0, 0.0, 0.0, 1.0, 1.0], ["a"] * 5)
    assert [a["perceiver"] for a in advantages] == pytest.approx(list(expected))
    assert [a["reasoner"] for a in advantages] == pytest.approx(list(expected))
    with pytest.raises(ValueError, match="different rewards"):
        role_advantages([{"perceiver": 1.0, "reasoner": 0.0}], ["a"], streams=streams)


TRAJECTORY_STREAMS = {"perceiver": "trajectory", "reasoner": "trajectory", "reflector": "reflector"}
_REWARD = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    estimator=st.sampled_from(sorted(ESTIMATORS)),
    streams=st.sampled_from([TRAJECTORY_STREAMS, None]),
)
def test_one_streams_rewards_never_move_another_streams_advantages(data, estimator, streams) -> None:
    """Whatever the estimator and rewards: each stream is estimated on its own (REINFORCE++-baseline's batch
    whitening included), so changing one stream's rewards leaves every other stream's advantages bit-identical."""
    n = data.draw(st.integers(1, 12), label="trajectories")
    prompts = data.draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n), label="prompts")
    rewards = {s: data.draw(st.lists(_REWARD, min_size=n, max_size=n), label=s) for s in ("shared", "reflector")}
    changed_stream = data.draw(st.sampled_from(sorted(rewards)), label="changed stream")
    changed = {**rewards, changed_stream: data.draw(st.lists(_REWARD, min_size=n, max_size=n), label="new rewards")}

    def advantages(r: dict[str, list[float]]) -> list[dict[str, float]]:
        per_traj = [
            {"perceiver": s, "reasoner": s, "reflector": f} for s, f in zip(r["shared"], r["reflector"], strict=True)
        ]
        return role_advantages(per_traj, prompts, estimator=estimator, streams=streams)

    before, after = advantages(rewards), advantages(changed)
    untouched = ("reflector",) if changed_stream == "shared" else ("perceiver", "reasoner")
    for role in untouched:
        assert [a[role] for a in after] == [a[role] for a in before]
    # ...and each stream's advantages are the estimator over that stream alone.
    alone = ESTIMATORS[estimator](changed["reflector"], prompts)
    assert [a["reflector"] for a in after] == pytest.approx(list(alone), abs=1e-12)


def test_reinforce_baseline_whitens_each_stream_on_its_own() -> None:
    """The outside check's case: a reflector with a wide reward spread no longer shrinks the reasoner's advantages."""
    shared, reflector, prompts = [1.0, 0.0, 1.0, 0.0], [0.0, 10.0, -10.0, 0.0], ["a", "a", "b", "b"]
    rewards = [{"reasoner": s, "reflector": f} for s, f in zip(shared, reflector, strict=True)]
    advantages = role_advantages(rewards, prompts, estimator="reinforce_baseline")
    # reasoner alone: centred ±0.5, batch unbiased std √(4·0.25/3) = √(1/3).
    expected = np.array([0.5, -0.5, 0.5, -0.5]) / (math.sqrt(1 / 3) + EPS)
    np.testing.assert_allclose([a["reasoner"] for a in advantages], expected, rtol=1e-12)
