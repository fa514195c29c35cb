"""One trained policy on the cluster: a group of DeepSpeed policy ranks (`GraphPolicyActor`), and a frozen
reference group for the KL term, on one Ray placement group of `{GPU: 1, CPU: 1}` bundles (MARTI's pattern: one
group per policy). The driver hands it experiences; it spreads them over its ranks and takes one optimizer step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import ray
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ray.launcher import RayActorGroup
from openrlhf.utils import get_strategy
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from transformers import AutoTokenizer

from emo_r3.training.cluster.actors import GraphPolicyActor, GraphReferenceActor
from emo_r3.training.cluster.experiences import has_image, image_padding, length, padding_experience
from emo_r3.training.cluster.openrlhf_args import policy_args
from emo_r3.training.cluster.rank_schedule import Padding, Slot, deal, fill
from emo_r3.training.config import ClusterConfig, TrainConfig
from emo_r3.training.rollouts import TrainingError


@dataclass(frozen=True)
class PendingFit:
    """A group's optimizer step in flight: every rank's append and fit."""

    appended: list[ray.ObjectRef]
    fitted: list[ray.ObjectRef]

    @property
    def refs(self) -> list[ray.ObjectRef]:
        return [*self.appended, *self.fitted]

    def metrics(self) -> dict[str, float]:
        """The step's loss parts and statistics over all ranks (rank 0's answer); raises if any rank failed."""
        return ray.get(self.refs)[len(self.appended)]


@dataclass
class PolicyGroup:
    name: str
    model_dir: Path
    args: SimpleNamespace
    rows_per_rank: int  # micro-batch rows each rank takes per optimizer step (DeepSpeed fixes it at start)
    with_reference: bool
    colocate_reference: bool
    pad_token_id: int

    def __post_init__(self) -> None:
        cluster = self.args.actor
        self.ranks = cluster.num_nodes * cluster.num_gpus_per_node
        self.strategy = get_strategy(self.args)
        self._placements = [self._place()]
        share = 0.5 if self.with_reference and self.colocate_reference else 1.0
        self.policy = RayActorGroup(
            cluster.num_nodes, cluster.num_gpus_per_node, GraphPolicyActor, pg=self._placements[0],
            num_gpus_per_actor=share,
        )  # fmt: skip
        self.reference = None
        if self.with_reference:
            if not self.colocate_reference:
                self._placements.append(self._place())
            self.reference = RayActorGroup(
                cluster.num_nodes, cluster.num_gpus_per_node, GraphReferenceActor, pg=self._placements[-1],
                num_gpus_per_actor=share,
            )  # fmt: skip

    def _place(self) -> PlacementGroup:
        """A bundle of one GPU and one CPU per rank, packed on as few nodes as possible; waits until it is placed."""
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(self.ranks)]
        group = placement_group(bundles, strategy="PACK")
        ray.get(group.ready())
        return group

    def close(self) -> None:
        """Free the group's GPUs; removing a placement group ends the actors placed on it."""
        for group in self._placements:
            remove_placement_group(group)

    def start(self, max_steps: int) -> list[ray.ObjectRef]:
        """Load the weights on every rank (DeepSpeed, optimizer); wait on the refs."""
        refs = self.policy.async_init_model_from_pretrained(self.strategy, str(self.model_dir), max_steps)
        if self.reference is not None:
            refs += self.reference.async_init_model_from_pretrained(self.strategy, str(self.model_dir))
        return refs

    def logprobs(self, experiences: Sequence[Experience], *, reference: bool) -> list[torch.Tensor]:
        """log π (the policy now, before its update) or log π_ref of every experience's actions, in order."""
        group = self.reference if reference else self.policy
        assert group is not None, f"policy {self.name} has no reference (kl_coef is 0)"
        # Every rank forwards as many rows, of the same kinds (ZeRO-3 gathers weights collectively, per module).
        plan = deal([has_image(e) for e in experiences], [length(e) for e in experiences], self.ranks)
        padded = self._rows(plan, experiences)
        refs = group.async_run_method_batch(
            "forward",
            sequences=[e.sequences for e in padded],
            action_mask=[e.action_mask for e in padded],
            attention_mask=[e.attention_mask for e in padded],
            mm_train_inputs_list=[e.mm_train_inputs for e in padded],
        )
        values = [value for chunk in ray.get(refs)[:: group.duplicate_actors] for value in chunk]
        slots = [slot for rank in plan for slot in rank]
        by_index = {slot: value for slot, value in zip(slots, values, strict=True) if isinstance(slot, int)}
        return [by_index[index] for index in range(len(experiences))]

    def submit_fit(self, experiences: Sequence[Experience], kl_coef: float, seed: int) -> PendingFit:
        """Start one optimizer step on these experiences, spread over the ranks (see `rank_schedule`); `seed` fixes
        the order every rank shuffles its rows in (the same on all ranks) and any dropout."""
        micro = self.args.train.micro_batch_size
        plan = deal([has_image(e) for e in experiences], [length(e) for e in experiences], self.ranks, micro)
        try:
            plan = fill(plan, self.rows_per_rank)
        except ValueError as error:
            raise ValueError(f"policy {self.name}: {error}; raise cluster.max_rows_per_rank") from error
        # In rank order, `rows_per_rank` each: the batch call hands rank i the i-th run of that many. A Ray actor runs
        # one caller's calls in order, so every rank appends before it fits.
        appended = self.policy.async_run_method_batch("append", experience=self._rows(plan, experiences))
        return PendingFit(appended, self.policy.async_run_method("fit", kl_coef, seed))

    def _rows(self, plan: list[list[Slot]], experiences: Sequence[Experience]) -> list[Experience]:
        image = next((e for e in experiences if has_image(e)), None)
        paddings = {Padding.TEXT: padding_experience(self.pad_token_id)}
        if image is not None:
            paddings[Padding.IMAGE] = image_padding(image)
        return [experiences[slot] if isinstance(slot, int) else paddings[slot] for rank in plan for slot in rank]

    def save_served(self, folder: Path) -> None:
        ray.get(self.policy.async_run_method("save_served", str(folder)))

    def save_checkpoint(self, tag: str) -> None:
        ray.get(self.policy.async_run_method("save_checkpoint", tag))

    def load_checkpoint(self, tag: str) -> None:
        ray.get(self.policy.async_run_method("load_checkpoint", tag))

    def trained_state(self) -> dict[str, torch.Tensor]:
        return ray.get(self.policy.async_run_method("trained_state"))[0]


def connect(cluster: ClusterConfig) -> None:
    """Join the Ray cluster (`cluster.ray_address`, else $RAY_ADDRESS), or start a local one."""
    if ray.is_initialized():
        return
    try:
        ray.init(address=cluster.ray_address, runtime_env=cluster.runtime_env or None)
    except ConnectionError as error:
        raise TrainingError(
            f"cannot reach the Ray cluster at {cluster.ray_address or '$RAY_ADDRESS'}: {error}. Start one with "
            "`ray start --head`, or leave cluster.ray_address and RAY_ADDRESS unset for a local one"
        ) from error


def start_groups(
    config: TrainConfig, model_dirs: Mapping[str, Path], policy_of: Mapping[str, str]
) -> dict[str, PolicyGroup]:
    """A started group per policy (`model_dirs`: its starting weights; `policy_of`: trained role -> policy), its
    DeepSpeed checkpoints under `run_dir/checkpoints/<policy>`."""
    lora, cluster = config.policy.mode == "lora", config.cluster
    connect(cluster)
    _check_gpus(config, len(model_dirs))
    groups = {}
    for name, folder in model_dirs.items():
        per_rank = rows_per_rank(config, [role for role, policy in policy_of.items() if policy == name])
        args = policy_args(
            config, folder, lora=lora, ckpt_dir=config.run_dir / "checkpoints" / name,
            rows_per_step=per_rank * cluster.gpus_per_policy * cluster.nodes_per_policy,
        )  # fmt: skip
        groups[name] = PolicyGroup(
            name, folder, args, rows_per_rank=per_rank, with_reference=config.algorithm.kl_coef > 0,
            colocate_reference=cluster.colocate_reference, pad_token_id=_pad_token_id(folder),
        )  # fmt: skip
    max_steps = config.steps * config.algorithm.mini_batches
    ray.get([ref for group in groups.values() for ref in group.start(max_steps)])
    return groups


def _check_gpus(config: TrainConfig, policies: int) -> None:
    """Fail at once, not by waiting forever for a placement group, when the cluster cannot hold the groups."""
    cluster = config.cluster
    ranks = cluster.gpus_per_policy * cluster.nodes_per_policy
    reference = config.algorithm.kl_coef > 0 and not cluster.colocate_reference
    needed = policies * ranks * (2 if reference else 1)
    available = ray.cluster_resources().get("GPU", 0)
    if needed > available:
        raise TrainingError(
            f"{policies} policy group(s) of {ranks} ranks{' plus their references' if reference else ''} need "
            f"{needed} GPUs; the Ray cluster has {available:g}. Lower cluster.gpus_per_policy, colocate the reference, "
            "or add nodes"
        )


def _pad_token_id(folder: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# Trainable calls a role makes per round at most: perceive; reason (its greedy label fallback is not trained);
# the two reflection checks.
CALLS_PER_ROUND: dict[str, int] = {"perceiver": 1, "reasoner": 1, "reflector": 2}


def rows_per_rank(config: TrainConfig, roles: Sequence[str]) -> int:
    """Micro-batch rows each rank of a policy takes per optimizer step: `cluster.max_rows_per_rank`, else the most a
    mini-batch can hold (every trajectory of it at the round limit), dealt over the ranks."""
    cluster = config.cluster
    if cluster.max_rows_per_rank is not None:
        rows = cluster.max_rows_per_rank
    else:
        algo = config.algorithm
        trajectories = algo.prompts_per_step // algo.mini_batches * algo.group_size
        rounds = config.graph_config.max_rounds + 1
        most = trajectories * rounds * sum(CALLS_PER_ROUND[role] for role in roles)
        # Each kind of row (image, text) is padded up to a whole micro-batch per rank: one more of each at most.
        rows = -(-most // (cluster.gpus_per_policy * cluster.nodes_per_policy)) + 2 * cluster.rows_per_micro_batch
    return -(-rows // cluster.rows_per_micro_batch) * cluster.rows_per_micro_batch
