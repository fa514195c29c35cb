"""The `openrlhf` trainer: the `local` trainer's step, with each policy trained by OpenRLHF's DeepSpeed actors on
a Ray cluster and rollouts on vLLM servers.

A step: the same graph code n times per prompt on the servers → trajectory rewards → group advantages →
token-exact rows → per policy, OpenRLHF `Experience`s with the rollout's logprobs, π_old from the policy ranks and
π_ref from the reference ranks → one optimizer step per mini-batch (`fit`) → the new weights saved and loaded by the
servers → traces, metrics, and a checkpoint when due. It only orchestrates; scoring is `training.scoring`, the loss
is `actors.GraphPolicyTrainer`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from transformers import ProcessorMixin

from emo_r3.agents.backends.transformers.processors import IMAGE_TEXT_PROCESSORS, load_processor
from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.model_specs import TransformersModelSpec, resolve_model_dir
from emo_r3.evals.items import LoadedDataset
from emo_r3.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from emo_r3.training.cluster.group_update import GroupUpdate, update_groups
from emo_r3.training.cluster.policy_group import connect, start_groups
from emo_r3.training.cluster.server_launch import launch_servers
from emo_r3.training.config import ServedPolicy, TrainConfig
from emo_r3.training.rollouts import TrainingError, sample_seed, training_items
from emo_r3.training.run_log import RunLog
from emo_r3.training.scoring import Scored, Scorer, mean_of, reward_metrics, scored_step, step_rows
from emo_r3.training.served_folders import ServedFolders
from emo_r3.training.served_policies import ServedPolicies
from emo_r3.training.step_loop import OnStep, run_steps

logger = logging.getLogger(__name__)


class ClusterTrainer:
    """`ClusterTrainer(config).train()` runs to `config.steps` on the Ray cluster (`cluster.ray_address`, else
    `$RAY_ADDRESS`, else a local one), resuming from the run folder's latest checkpoint if there is one. `dataset=`
    as for `LocalTrainer`."""

    def __init__(
        self, config: TrainConfig, *, cache_dir: Path | None = None, dataset: LoadedDataset | Any = None
    ) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.scorer = Scorer(config.algorithm)
        self.items = training_items(config, dataset)
        self.graph_config = config.graph_config
        connect(config.cluster)
        self.policy_of = _policy_of(config)
        self.model_dirs = {
            name: resolve_model_dir(spec.path, cache_dir, revision=spec.revision)
            for name, spec in self._policy_specs().items()
        }
        self.processors = {name: _image_processor(folder) for name, folder in self.model_dirs.items()}
        self.groups = start_groups(config, self.model_dirs, self.policy_of)
        self._servers: list[ray.actor.ActorHandle] = []
        self.served = ServedPolicies(config.rollout, self._serving(), config.policy.mode, self.policy_of)
        self.served_folders = ServedFolders(self.run_dir / "served")
        self.model_sets = self.served.model_sets()
        self.step = self._resume()
        self.log = RunLog(config, start_step=self.step)

    # -- setup -------------------------------------------------------------------------------------------

    def _policy_specs(self) -> dict[str, TransformersModelSpec]:
        """Each policy's starting weights: the one model of shared/lora mode, or each trained role's own model."""
        graph = self.graph_config
        specs = {}
        for role, name in self.policy_of.items():
            spec = graph.models[graph.roles[role].model]
            assert isinstance(spec, TransformersModelSpec)  # TrainConfig validation guarantees it for trained roles
            specs[name] = spec
        return specs

    def _serving(self) -> list[ServedPolicy]:
        """The configured servers, plus those `rollout.launch` starts: one set per policy's model."""
        served = self.config.rollout.served()
        launch = self.config.rollout.launch
        if launch is None:
            return served
        lora = self.config.policy.mode == "lora"
        for name, folder in self.model_dirs.items():
            roles = [role for role, policy in self.policy_of.items() if policy == name]
            if self.config.policy.mode != "separate":
                roles = list(ROLES)
            slots = len(self.policy_of) + 1 if lora else 0
            servers, actors = launch_servers(
                launch, folder, f"emo-r3-{name}", roles, lora_slots=slots, rank=self.config.policy.lora.rank
            )
            served += servers
            self._servers += actors
        return served

    def _resume(self) -> int:
        folder = latest_checkpoint(self.run_dir / "checkpoints" / "driver")
        if folder is None:
            self._push_weights(0)  # the servers start from the same weights as the policies
            return 0
        saved = load_checkpoint(folder)
        tag = saved["state"]["tag"]
        for group in self.groups.values():
            group.load_checkpoint(tag)
        set_rng_state(saved["state"]["rng"], saved["rng"])
        step = int(saved["state"]["step"])
        self._push_weights(step)
        logger.info("resumed %s at step %d from %s", self.run_dir, step, folder)
        return step

    # -- the loop ----------------------------------------------------------------------------------------

    def train(self, on_step: OnStep | None = None) -> list[dict[str, float]]:
        """Run the remaining steps; returns each step's metrics. `on_step(step, metrics)` after each one."""
        try:
            return run_steps(self, on_step)
        except RayActorError as error:
            raise TrainingError(
                f"step {self.step + 1}: a Ray actor died ({error}); run the same command again to resume from the "
                "last checkpoint"
            ) from error

    def train_step(self) -> dict[str, float]:
        cfg, step = self.config, self.step
        started = time.perf_counter()
        scored = scored_step(cfg, self.items, self.model_sets, step, self.scorer, self.policy_of)
        rollout_s = time.perf_counter() - started
        run_ids = self.log.record_rollouts(scored, step, self.graph_config.fingerprint())
        update = self._update(scored)
        self.step = step + 1
        sync_started = time.perf_counter()
        self._push_weights(self.step)
        timings = {**update.timings, "time/rollout_s": rollout_s, "time/sync_s": time.perf_counter() - sync_started}
        metrics = {**reward_metrics(scored), **mean_of(update.metrics), **timings}
        self.log.record_step(step, metrics, scored, update.row_values, run_ids, self.policy_of)
        if self.step % cfg.save_every == 0 or self.step == cfg.steps:
            self.save()
        return metrics

    def _update(self, scored: Sequence[Scored]) -> GroupUpdate:
        rows = step_rows(scored, self.policy_of)
        seed = sample_seed(self.config.seed, self.step, 0, 0, "update")
        return update_groups(self.groups, rows, self.processors, self.config.algorithm, seed)

    def _push_weights(self, step: int) -> None:
        """Save every policy's served weights (adapter or full) and load them into the servers."""
        with self.served_folders.push(step) as folder:
            folders = {}
            for name, group in self.groups.items():
                group.save_served(folder / name)
                folders[name] = folder / name
            self.served.push(folders)

    def close(self) -> None:
        """Stop the servers this trainer started and free its policy groups' GPUs (a driver's exit does it too)."""
        if self._servers:
            ray.get([server.stop.remote() for server in self._servers])
        for server in self._servers:
            ray.kill(server)
        for group in self.groups.values():
            group.close()

    def __enter__(self) -> ClusterTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self) -> Path:
        """Every group's DeepSpeed checkpoint under one tag, then the driver's state, whose `latest` commits it."""
        tag = f"step-{self.step:08d}"
        for group in self.groups.values():
            group.save_checkpoint(tag)
        return save_checkpoint(
            self.run_dir / "checkpoints" / "driver", self.step, policies={}, optimizer={},
            extra={"tag": tag, "config": self.config.saved()}, keep=self.config.keep_checkpoints,
        )  # fmt: skip


def _policy_of(config: TrainConfig) -> dict[Role, str]:
    roles = config.policy.train_roles
    if config.policy.mode == "shared":
        return dict.fromkeys(roles, "shared")
    return {role: role for role in roles}


def _image_processor(folder: Path) -> ProcessorMixin | None:
    """The policy's image processor (for the pixels of image rows), or None for a text-only model."""
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    return load_processor(folder, model_type) if model_type in IMAGE_TEXT_PROCESSORS else None
