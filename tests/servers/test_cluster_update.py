"""OpenRLHF's DeepSpeed actors against the `local` trainer: one optimizer step on the same rows from the same weights.

The rows come from a real rollout step of the graph (in-process, token-exact): calls with the image (perception, the
consistency check) and text-only calls (the coherence check). The cluster side is what `trainer: openrlhf` runs: two
ranks per policy group on a Ray cluster with fake GPUs (ZeRO-2, gloo, float32), a reference group for the k3 KL
term, the asymmetric clip, dual clip and truncated IS on. Both must give the same loss, gradient norm and updated
weights, in each policy mode: shared (every role's rows), lora (the reflector's adapter) and separate (the
reflector's own model).

The full-weight cases train the vision tower too (the paper's recipe), with image and text-only rows spread over
the two ranks: the case that crashed gloo (or could silently mix up gradients) before rows were dealt kind by kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ray_cluster import RUNTIME_ENV, RayCluster

from emo_r3.agents.model_specs import resolve_model_dir
from emo_r3.training.config import RolloutConfig, TrainConfig
from emo_r3.training.local_trainer import LocalTrainer
from emo_r3.training.rollouts import step_rollouts, usable
from emo_r3.training.rows import TrainingRow
from emo_r3.training.scoring import step_rows
from emo_r3.training.update import frozen_logprobs, update

pytestmark = pytest.mark.timeout(900)

# Float32 on both sides; what is left is summation order (two ranks, chunked LM head, fused CPU Adam).
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-6
ADAM_EPS = 1e-8  # torch AdamW's and DeepSpeed CPU Adam's default
LR = 1e-3
VISION = ("vision_model", "visual", "connector", "merger")


def _config(run_dir: Path, data: Path, model: str, mode: str, cluster: RayCluster) -> TrainConfig:
    sampling = {"temperature": 1.0, "max_tokens": 6}
    lora = {"rank": 8, "alpha": 16, "dropout": 0.0}  # no dropout: its random masks would differ between trainers
    return TrainConfig.load(
        {
            "trainer": "openrlhf", "run_dir": str(run_dir), "seed": 3, "steps": 1, "report_to": [],
            "traces": False,
            "data": {"kind": "fi", "path": str(data), "split": "all"},
            "graph": {
                "max_rounds": 0,
                # separate mode: the reflector has a model of its own (the same file, loaded twice)
                "models": {"default": {"path": f"offline:{model}"}, "judge": {"path": f"offline:{model}"}},
                "roles": {
                    "perceiver": {"sampling": sampling}, "reasoner": {"sampling": sampling},
                    "reflector": {"sampling": sampling, "model": "judge" if mode == "separate" else "default"},
                },
            },
            "policy": {"mode": mode, "lora": lora, **({"train_roles": ["reflector"]} if mode != "shared" else {})},
            # Never contacted: the rows come from in-process rollouts.
            "rollout": {"backend": "vllm", "base_url": "http://127.0.0.1:9", "served_model": "unused"},
            "algorithm": {
                "group_size": 4, "prompts_per_step": 1, "reward_fn": "train_rewards:names_gold_label",
                "kl_coef": 0.05, "dual_clip": 3.0, "tis_cap": 2.0,
            },
            "optim": {"lr": LR, "weight_decay": 0.01, "grad_clip": 1.0},
            "cluster": {
                "ray_address": cluster.address, "runtime_env": RUNTIME_ENV, "gpus_per_policy": 2,
                "param_dtype": "fp32", "adam_offload": True,
            },
        }
    )  # fmt: skip


@dataclass
class Stepped:
    rows: list[TrainingRow]
    local: dict[str, float]  # the local update's metrics
    cluster: dict[str, float]
    local_after: dict[str, torch.Tensor]
    local_grads: dict[str, torch.Tensor]  # the local step's (clipped) gradients, read back from AdamW's first moment
    cluster_before: dict[str, torch.Tensor]
    cluster_after: dict[str, torch.Tensor]


def _local_names(state: dict[str, torch.Tensor], role: str | None) -> dict[str, torch.Tensor]:
    """OpenRLHF's parameter names as the `local` policy names them (its LoRA adapter is "default", local's the
    role's)."""
    if role is None:
        return state
    return {name.replace(".default.", f".{role}."): value for name, value in state.items()}


def _step(config: TrainConfig) -> Stepped:
    from emo_r3.training.cluster.group_update import update_groups
    from emo_r3.training.cluster.policy_group import start_groups

    local = LocalTrainer(config.model_copy(update={"trainer": "local", "rollout": RolloutConfig()}))
    policy_of = local.policies.policy_of
    (name,) = local.policies.policies
    policy = local.policies.policies[name]
    scored = local.scorer.score(
        usable(asyncio.run(step_rollouts(config, local.items, local.model_sets, 0)), 0), policy_of
    )
    rows = step_rows(scored, policy_of)

    graph = config.graph_config
    model_dir = resolve_model_dir(graph.models[graph.roles[next(iter(policy_of))].model].path)
    groups = start_groups(config, {name: model_dir}, policy_of)
    try:
        before = _local_names(groups[name].trained_state(), policy.adapter)
        policy.load_state_dict(before)  # the same LoRA initialisation on both sides (full weights: the same file)
        algo, optim = config.algorithm, config.optim
        ref = frozen_logprobs(local.policies, rows, optim, reference=True)
        local_metrics = update(local.policies, local.optimizer, rows, algo, optim, ref=ref).metrics
        processors = {name: _processor(model_dir)}
        cluster_metrics = update_groups(groups, rows, processors, algo, seed=0).metrics[0]
        after = _local_names(groups[name].trained_state(), policy.adapter)
    finally:
        for group in groups.values():
            group.close()
    params = dict(policy.named_parameters())
    state = local.optimizer.state
    grads = {n: state[p]["exp_avg"] / (1 - config.optim.betas[0]) for n, p in params.items() if p in state}
    return Stepped(rows, local_metrics, cluster_metrics, policy.state_dict(), grads, before, after)


def _processor(model_dir: Path):
    import json

    from emo_r3.agents.backends.transformers.processors import load_processor

    return load_processor(model_dir, json.loads((model_dir / "config.json").read_text())["model_type"])


CASES = [
    ("tiny-idefics3", "shared"),
    ("tiny-qwen2.5-vl", "shared"),
    ("tiny-idefics3", "lora"),
    ("tiny-idefics3", "separate"),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{model}-{mode}" for model, mode in CASES])
def stepped(
    request: pytest.FixtureRequest,
    ray_cluster: RayCluster,
    one_image_dataset: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stepped]:
    model, mode = request.param
    yield _step(_config(tmp_path_factory.mktemp(f"{model}-{mode}"), one_image_dataset, model, mode, ray_cluster))


def test_rows_mix_image_and_text_only_calls(stepped: Stepped) -> None:
    assert any(row.images for row in stepped.rows) and not all(row.images for row in stepped.rows)


def test_same_loss_and_gradient_norm(stepped: Stepped) -> None:
    local, cluster = stepped.local, stepped.cluster
    for name in ("pg_loss", "kl_loss", "loss"):
        assert cluster[name] == pytest.approx(local[name], rel=LOSS_RTOL, abs=1e-7), name
    (norm,) = (key for key in local if key.startswith("grad_norm/"))
    assert cluster[norm] == pytest.approx(local[norm], rel=LOSS_RTOL)
    assert cluster["tokens"] == local["tokens"] == sum(len(row.completion_token_ids) for row in stepped.rows)


def test_same_updated_weights(stepped: Stepped) -> None:
    """Equal to 1e-6 wherever Adam's step is insensitive to float noise in the gradient. Its first step is
    lr·g/(|g| + ε): for |g| > 100·ε a 1% error in g moves it by under 1e-7, but for |g| near ε (entries that are near
    cancellations, where summation order over ranks shows) it can land anywhere in ±lr. Those few are counted."""
    after, local, grads = stepped.cluster_after, stepped.local_after, stepped.local_grads
    assert set(after) == set(local) == set(grads)
    moved = max(float((after[name] - stepped.cluster_before[name]).abs().max()) for name in after)
    assert moved > 100 * WEIGHT_ATOL  # the step moved the weights far more than the tolerance
    sensitive = total = 0
    for name in after:
        difference = (after[name] - local[name].float()).abs()
        near_eps = grads[name].abs() < 100 * ADAM_EPS
        assert not (difference[~near_eps] > WEIGHT_ATOL).any(), name
        assert float(difference.max()) <= 2 * LR, name
        sensitive, total = sensitive + int((difference > WEIGHT_ATOL).sum()), total + difference.numel()
    assert sensitive <= 1e-3 * total, f"{sensitive} of {total} entries differ"


def test_the_vision_tower_trains_in_full_weight_modes(stepped: Stepped) -> None:
    vision = [name for name in stepped.cluster_after if any(part in name for part in VISION)]
    if not any(".lora_" in name for name in stepped.cluster_after):
        assert vision, "full-weight training should include the vision tower"
        moved = [name for name in vision if not torch.equal(stepped.cluster_after[name], stepped.cluster_before[name])]
        assert len(moved) == len(vision)
