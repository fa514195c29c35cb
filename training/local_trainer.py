"""The `local` trainer: rollouts through the graph, trajectory rewards, group advantages, rows, one update per
mini-batch, then logging and checkpoints. It only orchestrates; the math lives in rewards/advantages/losses/update.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emo_r3.agents.backends.vllm.adapters import load_adapters
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.model_specs import load_chat_model
from emo_r3.evals.datasets import load_dataset
from emo_r3.graphs.traces.records import TrainingRowRecord
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.trajectory import Trajectory
from emo_r3.training.advantages import role_advantages
from emo_r3.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from emo_r3.training.config import TrainConfig
from emo_r3.training.policies import PolicySet, build_policies
from emo_r3.training.rewards import RewardBreakdown, load_reward_fn, role_rewards
from emo_r3.training.rollouts import Rollout, prompt_indices, rollout_step
from emo_r3.training.rows import TrainingRow, rows_from_trajectory
from emo_r3.training.update import RowKey, UpdateResult, frozen_logprobs, update

logger = logging.getLogger(__name__)

# Perceiver and reasoner share the trajectory reward, so they share advantage groups; the reflector has its own.
REWARD_STREAMS: dict[str, str] = {"perceiver": "trajectory", "reasoner": "trajectory", "reflector": "reflector"}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. every rollout of a step failed); checkpoints written so far are kept."""


@dataclass
class Scored:
    rollout: Rollout
    rewards: dict[Role, RewardBreakdown]
    advantages: dict[Role, float]


class LocalTrainer:
    """Single-process trainer (CPU or one GPU). `LocalTrainer(config).train()` runs to `config.steps`, resuming from
    the run folder's latest checkpoint if there is one."""

    def __init__(self, config: TrainConfig, *, cache_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.seed)
        self._custom_reward = load_reward_fn(config.algorithm.reward_fn) if config.algorithm.reward_fn else None
        data = config.data
        self.dataset = load_dataset(data.kind, data.path, split=data.split, limit=data.limit, seed=config.seed)
        if not self.dataset.items:
            raise TrainingError(f"dataset {data.kind}:{data.path} (split {data.split}) has no usable items")
        self.graph_config = config.graph_config
        self.policies: PolicySet = build_policies(
            self.graph_config, config.policy, with_reference=config.algorithm.kl_coef > 0, cache_dir=cache_dir
        )
        self.models: dict[Role, ChatModel] = self._rollout_models()
        self.optimizer = torch.optim.AdamW(
            [{"params": policy.parameters()} for policy in self.policies.policies.values()],
            lr=config.optim.lr, betas=config.optim.betas, weight_decay=config.optim.weight_decay,
        )  # fmt: skip
        self.step = 0
        self.store = TraceStore(self.run_dir / "traces.sqlite") if config.traces else None
        self._resume()
        self._writer = self._tensorboard()

    # -- setup -------------------------------------------------------------------------------------------

    def _rollout_models(self) -> dict[Role, ChatModel]:
        rollout = self.config.rollout
        if rollout.backend == "in_process":
            return self.policies.chat_models
        trained = self.policies.policy_of
        return {role: load_chat_model(rollout.server(role if role in trained else None)) for role in ROLES}

    def _resume(self) -> None:
        folder = latest_checkpoint(self.run_dir / "checkpoints")
        if folder is None:
            return
        saved = load_checkpoint(folder)
        try:
            self.policies.load_state_dict(saved["policies"])
            self.optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"{folder} was written by another policy setup ({error}); train with the config it was made with, "
                "or give this config a new run_dir"
            ) from error
        set_rng_state(saved["state"]["rng"], saved["rng"])
        self.step = int(saved["state"]["step"])
        logger.info("resumed %s at step %d from %s", self.run_dir, self.step, folder)

    def _tensorboard(self):  # -> SummaryWriter | None; tensorboard is imported only when it is on
        if not self.config.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run logged after its last checkpoint; they are about to be redone.
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step)

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Run the remaining steps; returns each step's metrics. `on_step(step, metrics)` after each one."""
        history = []
        self._sync_adapters()
        try:
            while self.step < self.config.steps:
                metrics = self.train_step()
                history.append(metrics)
                if on_step is not None:
                    on_step(self.step, metrics)
        finally:
            if self._writer is not None:
                self._writer.close()
        return history

    def train_step(self) -> dict[str, float]:
        """One rollout step and its updates; then logs, syncs served adapters, and checkpoints when due."""
        cfg, step = self.config, self.step
        started = time.perf_counter()
        scored = self._score(_usable(asyncio.run(self._rollouts(step)), step))
        rollout_s = time.perf_counter() - started
        run_ids = self._record_runs(scored, step)
        updates, row_values = self._update(scored)
        metrics = {
            **_reward_metrics(scored),
            **_mean_of(updates),
            "time/rollout_s": rollout_s,
            "time/update_s": time.perf_counter() - started - rollout_s,
        }
        self.step = step + 1
        self._log(step, metrics, scored, row_values, run_ids)
        self._sync_adapters()
        if self.step % cfg.save_every == 0 or self.step == cfg.steps:
            self.save()
        return metrics

    async def _rollouts(self, step: int) -> list[Rollout]:
        cfg = self.config
        items = self.dataset.items
        chosen = [items[i] for i in prompt_indices(len(items), cfg.algorithm.prompts_per_step, step, cfg.seed)]
        rollouts = await rollout_step(
            self.graph_config, self.models, chosen, group_size=cfg.algorithm.group_size, seed=cfg.seed,
            step=step, max_concurrency=cfg.rollout.max_concurrency,
        )  # fmt: skip
        version = f"step-{step}"
        for rollout in rollouts:
            for call in rollout.result.trajectory.calls if rollout.result.trajectory else ():
                call.weight_version = version
        return rollouts

    def _score(self, rollouts: list[Rollout]) -> list[Scored]:
        """Rewards per role on each whole trajectory, then group advantages for the trained roles."""
        algo, trained = self.config.algorithm, self.policies.policy_of
        kept = [r for r in rollouts if r.result.trajectory is not None]
        rewards = [self._reward(r.result.trajectory, r.item.label) for r in kept]
        streams = REWARD_STREAMS if algo.group_by == "prompt" else None
        advantages = role_advantages(
            [{role: rewards[i][role].total for role in trained} for i in range(len(kept))],
            [r.item.id for r in kept],
            estimator=algo.estimator,
            streams=streams,
        )
        return [Scored(r, rw, adv) for r, rw, adv in zip(kept, rewards, advantages, strict=True)]

    def _reward(self, trajectory: Trajectory, gold: str) -> dict[Role, RewardBreakdown]:
        if self._custom_reward is not None:
            return self._custom_reward(trajectory, gold)
        algo = self.config.algorithm
        return role_rewards(trajectory, gold, algo.rer, algo.graph_terms)

    def _rows(self, scored: list[Scored]) -> list[TrainingRow]:
        rows = []
        for s in scored:
            trajectory, group = s.rollout.result.trajectory, s.rollout.item.id
            policy_of = self.policies.policy_of
            rows += rows_from_trajectory(trajectory, group=group, advantages=s.advantages, policy_of=policy_of)
        return rows

    def _update(self, scored: list[Scored]) -> tuple[list[dict[str, float]], dict[RowKey, dict[str, float]]]:
        """Split the step's prompts into mini-batches and update once on each."""
        algo, optim = self.config.algorithm, self.config.optim
        rows = self._rows(scored)
        old = frozen_logprobs(self.policies, rows, optim, reference=False) if algo.mini_batches > 1 else None
        prompts = list(dict.fromkeys(row.group for row in rows))
        size = max(1, -(-len(prompts) // algo.mini_batches))
        results: list[UpdateResult] = []
        for start in range(0, len(prompts), size):
            batch_prompts = set(prompts[start : start + size])
            batch = [row for row in rows if row.group in batch_prompts]
            ref = frozen_logprobs(self.policies, batch, optim, reference=True) if algo.kl_coef > 0 else None
            results.append(update(self.policies, self.optimizer, batch, algo, optim, old=old, ref=ref))
        row_values = {key: value for result in results for key, value in result.row_values.items()}
        return [result.metrics for result in results], row_values

    # -- outputs -----------------------------------------------------------------------------------------

    def _record_runs(self, scored: list[Scored], step: int) -> dict[str, str]:
        """Each rollout as a trace-store run (source "train") with its reward breakdowns; trajectory id -> run id."""
        if self.store is None:
            return {}
        run_ids = {}
        config_hash = self.graph_config.fingerprint()
        for s in scored:
            result = s.rollout.result
            images = {i.sha256: i for call in result.trajectory.calls for m in call.messages for i in m.images}
            run_id = self.store.record_run(
                result, source="train", images=list(images.values()), config_hash=config_hash,
                input_ref=f"{self.config.name} step {step} item {s.rollout.item.id} sample {s.rollout.sample}",
            )  # fmt: skip
            run_ids[result.trajectory.id] = run_id
            for role, breakdown in s.rewards.items():
                values = {**breakdown.terms, "total": breakdown.total}
                if role in s.advantages:
                    values["advantage"] = s.advantages[role]
                self.store.record_rewards(run_id, values, role=role)
        return run_ids

    def _log(
        self,
        step: int,
        metrics: dict[str, float],
        scored: list[Scored],
        row_values: dict[RowKey, dict[str, float]],
        run_ids: dict[str, str],
    ) -> None:
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()
        if self.store is not None:
            by_id = {s.rollout.result.trajectory.id: s for s in scored}
            records = []
            for (trajectory_id, call_idx), values in row_values.items():
                scored_run = by_id[trajectory_id]
                role = scored_run.rollout.result.trajectory.calls[call_idx].role
                record = TrainingRowRecord(
                    run_id=run_ids[trajectory_id], call_idx=call_idx, policy=self.policies.policy_of[role],
                    advantage=scored_run.advantages[role], values=values,
                )  # fmt: skip
                records.append(record)
            self.store.record_training_step(self.config.name, step, metrics, records)

    def _sync_adapters(self) -> None:
        """vLLM rollouts: save each trained adapter and load it into the server in place."""
        rollout = self.config.rollout
        if rollout.backend != "vllm":
            return
        folder = self.run_dir / "adapters" / f"step-{self.step:08d}"
        shutil.rmtree(folder, ignore_errors=True)
        adapters = self.policies.save_adapters(folder)
        load_adapters(rollout.server(), adapters)
        for old in sorted((self.run_dir / "adapters").glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir / "checkpoints", self.step,
            policies=self.policies.state_dict(), optimizer=self.optimizer.state_dict(),
            extra={"config": self.config.model_dump(mode="json")}, keep=self.config.keep_checkpoints,
        )  # fmt: skip


def _usable(rollouts: list[Rollout], step: int) -> list[Rollout]:
    """The step's rollouts, unless none finished: then stop, saying why (a dead server must not train on nothing)."""
    if rollouts and all(not r.result.ok for r in rollouts):
        first = rollouts[0].result
        raise TrainingError(
            f"step {step}: all {len(rollouts)} rollouts failed, e.g. {first.termination}: {first.error}; fix the "
            "cause and run the same command again to resume from the last checkpoint"
        )
    return rollouts


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _reward_metrics(scored: list[Scored]) -> dict[str, float]:
    """Means over the step's trajectories: total reward, each term, the reflector's verdict accuracy, errors."""
    if not scored:
        return {"reward/mean": 0.0, "rollout/trajectories": 0.0}
    shared = [s.rewards["reasoner"] for s in scored]
    metrics = {"reward/mean": float(np.mean([b.total for b in shared]))}
    for term in shared[0].terms:
        metrics[f"reward/{term}"] = float(np.mean([b.terms[term] for b in shared]))
    metrics["reward/reflector"] = float(np.mean([s.rewards["reflector"].total for s in scored]))
    trajectories = [s.rollout.result.trajectory for s in scored]
    metrics["rollout/trajectories"] = float(len(scored))
    metrics["rollout/errors"] = float(sum(t.termination in ("error", "timeout") for t in trajectories))
    metrics["rollout/corrections"] = float(np.mean([t.corrections for t in trajectories]))
    return metrics


def _mean_of(updates: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for u in updates for name in u)
    return {name: float(np.mean([u[name] for u in updates if name in u])) for name in names}
