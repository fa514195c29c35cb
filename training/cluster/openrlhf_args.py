"""OpenRLHF's settings object, from the project's training config: which setting maps to which OpenRLHF flag.

OpenRLHF reads about 165 settings from one nested namespace (`args.actor.*`, `args.ds.*`, `args.algo.*`, ...). Its
parser is built only under the `__main__` of `openrlhf.cli.train_ppo_ray`, so it is captured there when the module
asks it to parse: OpenRLHF's own defaults, never a copy of them that could drift.

| project setting | OpenRLHF flag |
|---|---|
| algorithm.clip_low / clip_high | --actor.eps_clip_low_high LOW HIGH |
| algorithm.dual_clip | --actor.dual_clip C |
| algorithm.tis_cap | --algo.advantage.is_correction_level token, _mode clip, _gating ratio, _threshold 0 CAP |
| algorithm.kl_coef / kl_estimator | --algo.kl.use_loss, --algo.kl.init_coef B, --algo.kl.estimator K |
| optim.lr / betas / weight_decay / grad_clip | --actor.adam.lr, .betas, .weight_decay; --actor.max_norm |
| (no schedule, no warm-up) | --actor.lr_scheduler constant, --actor.lr_warmup_ratio 0 |
| policy.lora.rank / alpha / dropout / target_modules | --ds.lora.rank, .alpha, .dropout; args.ds.lora.target_modules |
| policy.gradient_checkpointing | --actor.gradient_checkpointing_enable |
| cluster.gpus_per_policy / nodes_per_policy | --actor.num_gpus_per_node / num_nodes, --ref.* |
| cluster.zero_stage / param_dtype / adam_offload | --ds.zero_stage, --ds.param_dtype, --ds.adam_offload |
| cluster.rows_per_micro_batch | --train.micro_batch_size |
| rows per optimizer step (all ranks) | --train.batch_size |
| seed | --train.seed |

Per-trajectory token weighting (`algorithm.aggregation`) has no OpenRLHF flag: each row carries its loss weight and
the project's training step (`actors.GraphPolicyTrainer`) aggregates with it.
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

from emo_r3.training.config import TrainConfig


class _Parsed(Exception):
    """Raised by the captured parser instead of parsing `sys.argv`."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


@contextlib.contextmanager
def _capture_parse() -> Iterator[None]:
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> argparse.Namespace:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]


def openrlhf_parser() -> argparse.ArgumentParser:
    """OpenRLHF's `train_ppo_ray` argument parser, with all its flags and defaults."""
    import openrlhf.cli.train_ppo_ray as command

    try:
        with _capture_parse():
            runpy.run_path(command.__file__, run_name="__main__")
    except _Parsed as parsed:
        return parsed.parser
    raise RuntimeError(f"{command.__file__} finished without parsing its arguments; is this OpenRLHF 0.11?")


def openrlhf_args(flags: Sequence[str]) -> SimpleNamespace:
    """OpenRLHF's nested settings with `flags` applied on top of its defaults."""
    from openrlhf.utils.config import hierarchize

    return hierarchize(openrlhf_parser().parse_args(list(flags)))


def policy_flags(config: TrainConfig, model_dir: Path, *, lora: bool, ckpt_dir: Path, rows_per_step: int) -> list[str]:
    """The OpenRLHF flags of one policy group (see the table above)."""
    algo, optim, cluster = config.algorithm, config.optim, config.cluster
    ranks = [str(cluster.nodes_per_policy), str(cluster.gpus_per_policy)]
    flags = [
        "--actor.model_name_or_path", str(model_dir),
        "--actor.num_nodes", ranks[0], "--actor.num_gpus_per_node", ranks[1],
        "--ref.num_nodes", ranks[0], "--ref.num_gpus_per_node", ranks[1],
        "--ds.zero_stage", str(cluster.zero_stage),
        "--ds.param_dtype", "bf16" if cluster.param_dtype == "fp32" else cluster.param_dtype,
        "--ds.attn_implementation", "sdpa",
        "--train.micro_batch_size", str(cluster.rows_per_micro_batch),
        "--train.batch_size", str(rows_per_step),
        "--train.max_epochs", "1",
        "--train.seed", str(config.seed),
        "--actor.adam.lr", str(optim.lr),
        "--actor.adam.betas", *map(str, optim.betas),
        "--actor.adam.weight_decay", str(optim.weight_decay),
        "--actor.max_norm", str(optim.grad_clip),
        "--actor.lr_scheduler", "constant", "--actor.lr_warmup_ratio", "0",
        "--actor.eps_clip_low_high", str(algo.clip_low), str(algo.clip_high),
        "--rollout.temperature", "1.0",  # logprobs stay raw, as the servers and the `local` trainer report them
        "--vllm.sync_backend", "gloo",  # weights reach vLLM over HTTP, never through OpenRLHF's engines
        "--ckpt.path", str(ckpt_dir), "--ckpt.output_dir", str(ckpt_dir / "hf"),
        "--ckpt.max_num", str(config.keep_checkpoints),
    ]  # fmt: skip
    if algo.dual_clip is not None:
        flags += ["--actor.dual_clip", str(algo.dual_clip)]
    if algo.tis_cap is not None:
        flags += [
            "--algo.advantage.is_correction_level", "token", "--algo.advantage.is_correction_mode", "clip",
            "--algo.advantage.is_correction_gating", "ratio", "--algo.advantage.is_correction_threshold",
            "0", str(algo.tis_cap),
        ]  # fmt: skip
    if algo.kl_coef > 0:
        flags += [
            "--algo.kl.use_loss",
            "--algo.kl.init_coef",
            str(algo.kl_coef),
            "--algo.kl.estimator",
            algo.kl_estimator,
        ]
    if cluster.adam_offload:
        flags.append("--ds.adam_offload")
    if config.policy.gradient_checkpointing:
        flags.append("--actor.gradient_checkpointing_enable")
    if lora:
        lora_config = config.policy.lora
        flags += ["--ds.lora.rank", str(lora_config.rank), "--ds.lora.alpha", str(int(lora_config.alpha))]
        flags += ["--ds.lora.dropout", str(lora_config.dropout)]
    return [*flags, *cluster.openrlhf_args]


def policy_args(
    config: TrainConfig, model_dir: Path, *, lora: bool, ckpt_dir: Path, rows_per_step: int
) -> SimpleNamespace:
    args = openrlhf_args(policy_flags(config, model_dir, lora=lora, ckpt_dir=ckpt_dir, rows_per_step=rows_per_step))
    # A regex, as the `local` trainer gives it to peft; the flag would split it into module names.
    args.ds.lora.target_modules = config.policy.lora.target_modules
    # fp32 has no OpenRLHF flag: `actors` loads the weights in float32 and DeepSpeed then trains without bf16/fp16.
    args.ds.param_dtype = config.cluster.param_dtype
    return args
