"""A simple verifiable reward for training tests: the reflector's coherence answer must name the gold label.

The coherence check is a sampled closed-set choice among the label set, so even a tiny random model gives a group
of rollouts different answers, and raising the probability of one label is learnable in a few steps.
"""

from __future__ import annotations

from emo_r3.agents.call_record import ROLES, Role
from emo_r3.graphs.trajectory import Trajectory
from emo_r3.training.rewards import RewardBreakdown, accuracy_score


def names_gold_label(trajectory: Trajectory, gold: str) -> dict[Role, RewardBreakdown]:
    """R = 1[first coherence verdict's implied label == gold], shared by every role."""
    verdict = trajectory.reflections[0].coherence if trajectory.reflections else None
    score = accuracy_score(verdict.implied_label if verdict else None, gold)
    return dict.fromkeys(ROLES, RewardBreakdown(terms={"names_gold": score}, total=score))
