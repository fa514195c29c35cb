"""Rollout steps: the same graph, n runs per prompt, seeds a pure function of the run, and a step whose runs all
failed stops training instead of training on nothing."""

from __future__ import annotations

import pytest

from emo_r3.training.rollouts import prompt_indices, sample_seed


def test_seeds_are_a_pure_function_of_the_run() -> None:
    seed = sample_seed(7, 3, 1, 2, "reasoner")
    assert seed == sample_seed(7, 3, 1, 2, "reasoner") and 0 <= seed < 2**31
    others = {
        sample_seed(7, 3, 1, 2, "perceiver"),
        sample_seed(7, 4, 1, 2, "reasoner"),
        sample_seed(8, 3, 1, 2, "reasoner"),
    }
    assert seed not in others and len(others) == 3


def test_each_epoch_visits_every_item_once_in_a_seeded_order() -> None:
    steps = [prompt_indices(5, 2, step, seed=1) for step in range(5)]
    flat = [i for indices in steps for i in indices]
    assert sorted(flat[:5]) == sorted(flat[5:10]) == list(range(5))
    assert steps == [prompt_indices(5, 2, step, seed=1) for step in range(5)]
    assert flat != [i for step in range(5) for i in prompt_indices(5, 2, step, seed=2)]


def test_a_step_whose_rollouts_all_failed_stops_training() -> None:
    from emo_r3.evals.items import EvalItem
    from emo_r3.graphs.trajectory import EmotionResult
    from emo_r3.training.rollouts import Rollout, TrainingError, usable

    item = EvalItem(id="a", image=b"", label="awe", label_set="mikels8")
    failed = EmotionResult(
        query_id="a", label=None, label_set="mikels8", termination="error", error="vLLM server unreachable"
    )
    ok = failed.model_copy(update={"termination": "accepted", "error": None, "label": "awe"})
    rollouts = [Rollout(item, sample, failed) for sample in range(3)]
    with pytest.raises(TrainingError, match=r"all 3 rollouts failed.*vLLM server unreachable"):
        usable(rollouts, step=4)
    assert usable([*rollouts, Rollout(item, 3, ok)], step=4)
