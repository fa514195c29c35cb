"""A step's rollouts scored: rewards per role on each whole trajectory, group advantages for the trained roles, the
token-exact rows they make, and the step's reward metrics. Shared by every trainer, so `local` and `openrlhf` train
on exactly the same numbers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.evals.items import EvalItem
from emo_r3.graphs.trajectory import Trajectory
from emo_r3.training.advantages import role_advantages
from emo_r3.training.config import AlgorithmConfig, TrainConfig
from emo_r3.training.rewards import RewardBreakdown, load_reward_fn, role_rewards
from emo_r3.training.rollouts import Rollout, step_rollouts, usable
from emo_r3.training.rows import TrainingRow, rows_from_trajectory

# Perceiver and reasoner share the trajectory reward, so they share advantage groups; the reflector has its own.
REWARD_STREAMS: dict[str, str] = {"perceiver": "trajectory", "reasoner": "trajectory", "reflector": "reflector"}


@dataclass
class Scored:
    rollout: Rollout
    rewards: dict[Role, RewardBreakdown]
    advantages: dict[Role, float]

    @property
    def trajectory(self) -> Trajectory:
        trajectory = self.rollout.result.trajectory
        assert trajectory is not None  # `Scorer.score` keeps only rollouts with one
        return trajectory


class Scorer:
    """The reward (EMO-R3's RER + graph terms with per-role credit, or `algorithm.reward_fn`) and the estimator."""

    def __init__(self, algorithm: AlgorithmConfig) -> None:
        self.algorithm = algorithm
        self._custom = load_reward_fn(algorithm.reward_fn) if algorithm.reward_fn else None

    def rewards(self, trajectory: Trajectory, gold: str) -> dict[Role, RewardBreakdown]:
        if self._custom is not None:
            return self._custom(trajectory, gold)
        return role_rewards(trajectory, gold, self.algorithm.rer, self.algorithm.graph_terms)

    def score(self, rollouts: Sequence[Rollout], trained: Iterable[Role]) -> list[Scored]:
        """Rewards per role on each whole trajectory, then group advantages for the trained roles."""
        trained = list(trained)
        kept = [r for r in rollouts if r.result.trajectory is not None]
        rewards = [self.rewards(r.result.trajectory, r.item.label) for r in kept]  # type: ignore[arg-type]
        streams = REWARD_STREAMS if self.algorithm.group_by == "prompt" else None
        advantages = role_advantages(
            [{role: reward[role].total for role in trained} for reward in rewards],
            [r.item.id for r in kept],
            estimator=self.algorithm.estimator,
            streams=streams,
        )
        return [Scored(r, rw, adv) for r, rw, adv in zip(kept, rewards, advantages, strict=True)]


def scored_step(
    config: TrainConfig,
    items: Sequence[EvalItem],
    model_sets: Sequence[Mapping[Role, ChatModel]],
    step: int,
    scorer: Scorer,
    trained: Iterable[Role],
) -> list[Scored]:
    """Step `step`'s rollouts through the graph (failed ones dropped, see `usable`), scored."""
    return scorer.score(usable(asyncio.run(step_rollouts(config, items, model_sets, step)), step), trained)


def step_rows(scored: Sequence[Scored], policy_of: Mapping[Role, str]) -> list[TrainingRow]:
    """Every trainable call of the step as a token-exact row, with its role's advantage."""
    rows = []
    for s in scored:
        group = s.rollout.item.id
        rows += rows_from_trajectory(s.trajectory, group=group, advantages=s.advantages, policy_of=policy_of)
    return rows


def prompt_mini_batches(rows: Sequence[TrainingRow], count: int) -> list[list[TrainingRow]]:
    """The rows split into `count` mini-batches by prompt (a prompt's whole group stays together), in order."""
    prompts = list(dict.fromkeys(row.group for row in rows))
    size = max(1, -(-len(prompts) // count))
    batches = []
    for start in range(0, len(prompts), size):
        chosen = set(prompts[start : start + size])
        batches.append([row for row in rows if row.group in chosen])
    return batches


def reward_metrics(scored: Sequence[Scored]) -> dict[str, float]:
    """Means over the step's trajectories: total reward, each term, the reflector's verdict accuracy, errors."""
    if not scored:
        return {"reward/mean": 0.0, "rollout/trajectories": 0.0}
    shared = [s.rewards["reasoner"] for s in scored]
    metrics = {"reward/mean": float(np.mean([b.total for b in shared]))}
    for term in shared[0].terms:
        metrics[f"reward/{term}"] = float(np.mean([b.terms[term] for b in shared]))
    metrics["reward/reflector"] = float(np.mean([s.rewards["reflector"].total for s in scored]))
    trajectories = [s.trajectory for s in scored]
    metrics["rollout/trajectories"] = float(len(scored))
    metrics["rollout/errors"] = float(sum(t.termination in ("error", "timeout") for t in trajectories))
    metrics["rollout/corrections"] = float(np.mean([t.corrections for t in trajectories]))
    return metrics


def mean_of(updates: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the updates that reported it."""
    names = dict.fromkeys(name for u in updates for name in u)
    return {name: float(np.mean([u[name] for u in updates if name in u])) for name in names}
