"""The `openrlhf` trainer's pieces that need no cluster: the config → OpenRLHF flag mapping (read back through
OpenRLHF's own parser), rows → `Experience` (token-exact), padding rows, rows per rank, and the metrics merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ray_cluster import use_stand_ins

from emo_r3.training.config import TrainConfig
from emo_r3.training.rows import TrainingRow

use_stand_ins()

from emo_r3.training.cluster.experiences import (  # noqa: E402 (OpenRLHF imports need the stand-ins first)
    LOSS_WEIGHT,
    has_image,
    image_padding,
    padding_experience,
    row_experience,
)
from emo_r3.training.cluster.group_update import merged_metrics  # noqa: E402
from emo_r3.training.cluster.openrlhf_args import policy_args  # noqa: E402
from emo_r3.training.cluster.policy_group import rows_per_rank  # noqa: E402


def _config(tmp_path: Path, **overrides: object) -> TrainConfig:
    config: dict = {
        "trainer": "openrlhf", "run_dir": str(tmp_path / "run"), "seed": 7,
        "data": {"kind": "fi", "path": str(tmp_path)},
        "graph": {"max_rounds": 1, "models": {"default": {"path": "offline:tiny-idefics3"}}},
        "rollout": {"backend": "vllm", "base_url": "http://127.0.0.1:8000", "served_model": "tiny"},
        "algorithm": {"group_size": 4, "prompts_per_step": 4, "mini_batches": 2, "clip_low": 0.2, "clip_high": 0.28,
                      "dual_clip": 3.0, "tis_cap": 2.0, "kl_coef": 0.01, "kl_estimator": "k3"},
        "optim": {"lr": 2e-6, "betas": [0.9, 0.95], "weight_decay": 0.05, "grad_clip": 0.5},
        "cluster": {"gpus_per_policy": 4, "nodes_per_policy": 2, "zero_stage": 3, "param_dtype": "bf16",
                    "rows_per_micro_batch": 2, "openrlhf_args": ["--ds.zpg", "8"]},
    }  # fmt: skip
    config.update(overrides)
    return TrainConfig.load(config)


def test_settings_map_onto_openrlhf_flags(tmp_path: Path) -> None:
    args = policy_args(_config(tmp_path), tmp_path / "model", lora=False, ckpt_dir=tmp_path / "ckpt", rows_per_step=96)
    assert args.actor.model_name_or_path == str(tmp_path / "model")
    assert (args.actor.num_nodes, args.actor.num_gpus_per_node, args.ref.num_gpus_per_node) == (2, 4, 4)
    assert args.actor.eps_clip_low_high == [0.2, 0.28] and args.actor.dual_clip == 3.0
    correction = args.algo.advantage
    assert (correction.is_correction_level, correction.is_correction_mode) == ("token", "clip")
    assert correction.is_correction_threshold == [0.0, 2.0]
    assert args.algo.kl.use_loss and args.algo.kl.init_coef == 0.01 and args.algo.kl.estimator == "k3"
    adam = args.actor.adam
    assert (adam.lr, tuple(adam.betas), adam.weight_decay, args.actor.max_norm) == (2e-6, (0.9, 0.95), 0.05, 0.5)
    assert args.actor.lr_scheduler == "constant" and args.actor.lr_warmup_ratio == 0
    assert (args.ds.zero_stage, args.ds.param_dtype, args.ds.zpg) == (3, "bf16", 8)
    assert (args.train.micro_batch_size, args.train.batch_size, args.train.seed) == (2, 96, 7)
    assert args.ckpt.path == str(tmp_path / "ckpt")
    assert args.ds.lora.rank == 0  # full weights


def test_lora_settings_keep_the_target_regex_and_fp32_has_no_flag(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        policy={"mode": "lora", "lora": {"rank": 16, "alpha": 32, "dropout": 0.1, "target_modules": "q_proj|v_proj"}},
        cluster={"param_dtype": "fp32"},
    )
    args = policy_args(config, tmp_path / "model", lora=True, ckpt_dir=tmp_path, rows_per_step=8)
    assert (args.ds.lora.rank, args.ds.lora.alpha, args.ds.lora.dropout) == (16, 32, 0.1)
    assert args.ds.lora.target_modules == "q_proj|v_proj" and args.ds.param_dtype == "fp32"


def _row(prompt: list[int], completion: list[int]) -> TrainingRow:
    return TrainingRow(
        trajectory_id="t", call_idx=0, group="g", role="reasoner", policy="shared", prompt_token_ids=prompt,
        completion_token_ids=completion, rollout_logprobs=[-0.5, -1.5], advantage=0.75,
    )  # fmt: skip


def test_a_row_becomes_an_experience_with_the_recorded_ids() -> None:
    experience = row_experience(_row([5, 6, 7], [8, 9]), 0.25, None)
    assert experience.sequences.tolist() == [[5, 6, 7, 8, 9]]
    # Position t predicts token t + 1: the last prompt position and the first completion one are actions.
    assert experience.action_mask.tolist() == [[False, False, True, True]]
    assert experience.rollout_log_probs.tolist() == [[0.0, 0.0, -0.5, -1.5]]
    assert experience.advantages.tolist() == [[0.0, 0.0, 0.75, 0.75]]
    assert experience.info[LOSS_WEIGHT].tolist() == [0.25] and not has_image(experience)


def test_padding_rows_have_no_action_and_no_weight() -> None:
    text = padding_experience(0)
    assert not text.action_mask.any() and float(text.info[LOSS_WEIGHT]) == 0.0
    image_row = row_experience(_row([5, 6, 7], [8, 9]), 0.25, {"pixel_values": torch.ones(1, 3, 4, 4)})
    padding = image_padding(image_row)
    assert has_image(padding) and torch.equal(padding.sequences, image_row.sequences)
    assert not padding.action_mask.any() and float(padding.info[LOSS_WEIGHT]) == 0.0
    assert float(padding.advantages.abs().sum()) == 0.0


def test_rows_per_rank_covers_the_worst_mini_batch(tmp_path: Path) -> None:
    config = _config(tmp_path)
    # 2 prompts x 4 samples per mini-batch, 2 rounds, 4 trained calls a round, over 8 ranks, + a micro-batch per kind
    assert rows_per_rank(config, ["perceiver", "reasoner", "reflector"]) == 8 + 4
    assert rows_per_rank(config.model_copy(update={"cluster": config.cluster.model_copy(
        update={"max_rows_per_rank": 3})}), ["reasoner"]) == 4  # rounded up to whole micro-batches  # fmt: skip


def test_metrics_merge_over_policies_like_local() -> None:
    merged = merged_metrics(
        {
            "perceiver": {"pg_loss": 1.0, "kl_loss": 0.5, "tokens": 10.0, "pg/clip_frac": 0.2, "grad_norm": 3.0},
            "reasoner": {"pg_loss": 2.0, "kl_loss": 1.5, "tokens": 30.0, "pg/clip_frac": 0.6, "grad_norm": 4.0},
        },
        kl_coef=0.1,
    )
    assert merged["pg_loss"] == 3.0 and merged["kl_loss"] == 2.0 and merged["tokens"] == 40.0
    assert merged["pg/clip_frac"] == pytest.approx(0.5)  # token-weighted: (0.2*10 + 0.6*30) / 40
    assert merged["grad_norm/perceiver"] == 3.0 and merged["grad_norm/reasoner"] == 4.0
    assert merged["loss"] == pytest.approx(3.0 + 0.1 * 2.0)
