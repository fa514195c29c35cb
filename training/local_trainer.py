"""The `local` trainer: rollouts through the graph, trajectory rewards, group advantages, rows, one update per
mini-batch, then logging and checkpoints. It only orchestrates; the math lives in rewards/advantages/losses/update.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emo_r3.evals.items import LoadedDataset
from emo_r3.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from emo_r3.training.config import TrainConfig
from emo_r3.training.policies import PolicySet, build_policies, optimizer_groups
from emo_r3.training.rollouts import training_items
from emo_r3.training.rows import RowKey
from emo_r3.training.run_log import RunLog
from emo_r3.training.scoring import Scored, Scorer, mean_of, prompt_mini_batches, reward_metrics, scored_step, step_rows
from emo_r3.training.served_folders import ServedFolders
from emo_r3.training.served_policies import ServedPolicies
from emo_r3.training.step_loop import OnStep, run_steps
from emo_r3.training.update import UpdateResult, frozen_logprobs, update

logger = logging.getLogger(__name__)


class LocalTrainer:
    """Single-process trainer (CPU or one GPU). `LocalTrainer(config).train()` runs to `config.steps`, resuming from
    the run folder's latest checkpoint if there is one. `dataset=` (a `datasets.Dataset` or a `LoadedDataset`) trains
    on it instead of the config's `data` section; resuming needs the same dataset again."""

    def __init__(
        self, config: TrainConfig, *, cache_dir: Path | None = None, dataset: LoadedDataset | Any = None
    ) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(config.seed)
        self.scorer = Scorer(config.algorithm)
        self.items = training_items(config, dataset)
        self.graph_config = config.graph_config
        self.policies: PolicySet = build_policies(
            self.graph_config, config.policy, with_reference=config.algorithm.kl_coef > 0, cache_dir=cache_dir
        )
        self.served = self._served()
        self.served_folders = ServedFolders(self.run_dir / "served")
        self.model_sets = self.served.model_sets() if self.served else [self.policies.chat_models]
        self.optimizer = torch.optim.AdamW(
            optimizer_groups(self.policies, config.optim.weight_decay), lr=config.optim.lr, betas=config.optim.betas
        )
        self.step = 0
        self._resume()
        self.log = RunLog(config, start_step=self.step)

    # -- setup -------------------------------------------------------------------------------------------

    def _served(self) -> ServedPolicies | None:
        rollout = self.config.rollout
        if rollout.backend == "in_process":
            return None
        return ServedPolicies(rollout, rollout.served(), self.config.policy.mode, self.policies.policy_of)

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

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self, on_step: OnStep | None = None) -> list[dict[str, float]]:
        """Run the remaining steps; returns each step's metrics. `on_step(step, metrics)` after each one."""
        self._sync_served()
        return run_steps(self, on_step)

    def train_step(self) -> dict[str, float]:
        """One rollout step and its updates; then logs, syncs served adapters, and checkpoints when due."""
        cfg, step = self.config, self.step
        started = time.perf_counter()
        scored = scored_step(cfg, self.items, self.model_sets, step, self.scorer, self.policies.policy_of)
        rollout_s = time.perf_counter() - started
        run_ids = self.log.record_rollouts(scored, step, self.graph_config.fingerprint())
        updates, row_values = self._update(scored)
        metrics = {
            **reward_metrics(scored),
            **mean_of(updates),
            "time/rollout_s": rollout_s,
            "time/update_s": time.perf_counter() - started - rollout_s,
        }
        self.step = step + 1
        self.log.record_step(step, metrics, scored, row_values, run_ids, self.policies.policy_of)
        self._sync_served()
        if self.step % cfg.save_every == 0 or self.step == cfg.steps:
            self.save()
        return metrics

    def _update(self, scored: list[Scored]) -> tuple[list[dict[str, float]], dict[RowKey, dict[str, float]]]:
        """Split the step's prompts into mini-batches and update once on each."""
        algo, optim = self.config.algorithm, self.config.optim
        rows = step_rows(scored, self.policies.policy_of)
        old = frozen_logprobs(self.policies, rows, optim, reference=False) if algo.mini_batches > 1 else None
        results: list[UpdateResult] = []
        for batch in prompt_mini_batches(rows, algo.mini_batches):
            ref = frozen_logprobs(self.policies, batch, optim, reference=True) if algo.kl_coef > 0 else None
            results.append(update(self.policies, self.optimizer, batch, algo, optim, old=old, ref=ref))
        row_values = {key: value for result in results for key, value in result.row_values.items()}
        return [result.metrics for result in results], row_values

    # -- outputs -----------------------------------------------------------------------------------------

    def _sync_served(self) -> None:
        """vLLM rollouts: save the trained weights (adapters or full) and load them into the servers in place."""
        if self.served is None:
            return
        with self.served_folders.push(self.step) as folder:
            self.served.push(self.policies.save_weights(folder))

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir / "checkpoints", self.step,
            policies=self.policies.state_dict(), optimizer=self.optimizer.state_dict(),
            extra={"config": self.config.saved()}, keep=self.config.keep_checkpoints,
        )  # fmt: skip


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
