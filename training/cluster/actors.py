"""The Ray actors of a policy group: OpenRLHF's DeepSpeed policy and reference actors, with the project's loss.

`GraphPolicyActor` is OpenRLHF's `PolicyModelActor` whose trainer (`GraphPolicyTrainer`) aggregates the loss the way
the `local` trainer does: each row's tokens weigh its loss weight (w / D from `algorithm.aggregation`), in the clipped
policy loss (OpenRLHF's `PolicyLoss`: asymmetric clip, dual clip, truncated IS) and in the k3 KL term alike, summed
over the optimizer step's rows on every rank. OpenRLHF's own step averages tokens instead. The actor also saves the
weights vLLM serves, checkpoints under an explicit tag, and reads or sets its trained tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import torch
from openrlhf.models.utils import compute_approx_kl
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ray.launcher import ReferenceModelActor
from openrlhf.trainer.ray.ppo_actor import ActorPPOTrainer, PolicyModelActor
from openrlhf.utils.vlm_utils import merge_mm_train_inputs

from emo_r3.training.cluster.experiences import LOSS_WEIGHT

# Sums over the step (losses) and token-weighted means (statistics) the trainer reports, as the `local` trainer does.
LOSS_PARTS = ("pg_loss", "kl_loss")


@contextlib.contextmanager
def float32_weights(param_dtype: str) -> Iterator[None]:
    """OpenRLHF loads weights in bf16 or fp16 only; `fp32` (exact parity with `local`, or small models) loads them
    in float32, and DeepSpeed then trains with neither bf16 nor fp16 on."""
    if param_dtype != "fp32":
        yield
        return
    import openrlhf.utils.utils as utils

    original = utils.convert_to_torch_dtype
    utils.convert_to_torch_dtype = lambda name: torch.float32 if name == "fp32" else original(name)
    try:
        yield
    finally:
        utils.convert_to_torch_dtype = original


def _quiet_progress_bars() -> None:
    """OpenRLHF's progress bars off in this actor process: the driver reports each step, and Ray would otherwise
    copy every bar update to the driver's terminal."""
    import openrlhf.trainer.ray.launcher as launcher
    import openrlhf.trainer.ray.ppo_actor as ppo_actor
    from tqdm import tqdm

    def quiet(*args: Any, **kwargs: Any) -> tqdm:
        return tqdm(*args, **{**kwargs, "disable": True})

    launcher.tqdm = ppo_actor.tqdm = quiet


class GraphPolicyTrainer(ActorPPOTrainer):
    """OpenRLHF's actor trainer, training step replaced: L = Σ_rows W_row · Σ_t (ℓ_PG,t + β·k3_t)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.totals: dict[str, float] = {}

    def training_step(
        self, experience: Experience, kl_ctl: float, step: int, loss_batch_info: dict | None = None
    ) -> dict[str, Any]:
        self.actor.train()
        device = experience.sequences.device
        mask = experience.action_mask
        weights = torch.stack(list(experience.info[LOSS_WEIGHT])).to(device).float()[:, None]
        mm_inputs = merge_mm_train_inputs(experience.mm_train_inputs or [], device)
        logprobs = self.actor(experience.sequences, mask, attention_mask=experience.attention_mask, **mm_inputs)
        # batch_num_tokens 1, dp_size 1: PolicyLoss then sums; the weights ride on the advantages, which the
        # clipped surrogate (dual clip included) scales with, as it is positively homogeneous in A.
        pg_loss, clip_frac, _, _, _ = self.actor_loss_fn(
            logprobs, experience.action_log_probs, experience.advantages * weights, action_mask=mask,
            rollout_log_probs=experience.rollout_log_probs, dp_size=1, batch_num_tokens=1.0,
        )  # fmt: skip
        loss = pg_loss
        kl = None
        if self.args.algo.kl.use_loss and kl_ctl > 0:
            kl = compute_approx_kl(logprobs, experience.base_action_log_probs, kl_estimator=self.args.algo.kl.estimator)
            loss = loss + kl_ctl * (kl * mask * weights).sum()
        # DeepSpeed divides every micro-batch's loss by the accumulation steps and averages gradients over the data
        # ranks; the loss above is a sum over the step's tokens on all ranks, so both are undone.
        scale = self.strategy.accumulated_gradient * (loss_batch_info or {}).get("dp_size", 1)
        self.strategy.backward(loss * scale, self.actor, self.actor_optim)
        self.strategy.optimizer_step(self.actor_optim, self.actor, self.actor_scheduler, name="actor")
        self._add(logprobs.detach(), experience, weights, pg_loss.detach(), kl, clip_frac)
        return {
            "metrics": {"policy_loss": pg_loss.detach()},
            "weights": {"policy_loss": None},  # OpenRLHF's token mean would divide by 0 on padding-only micro-steps
            "num_samples": float(mask.shape[0]),
            "num_action_tokens": float(mask.sum().item()),
        }

    def _add(
        self,
        logprobs: torch.Tensor,
        experience: Experience,
        weights: torch.Tensor,
        pg_loss: torch.Tensor,
        kl: torch.Tensor | None,
        clip_frac: torch.Tensor,
    ) -> None:
        tokens = experience.action_mask.float()
        old, rollout = experience.action_log_probs, experience.rollout_log_probs
        ratio = (logprobs - old).clamp(-20, 20).exp()
        parts = {
            "pg_loss": float(pg_loss),
            "tokens": float(tokens.sum()),
            # token sums, divided by the step's tokens in `GraphPolicyActor.fit`
            # PolicyLoss's clip fraction is a mean over the micro-batch's action tokens: NaN for a padding row
            "pg/clip_frac": float(clip_frac) * float(tokens.sum()) if tokens.any() else 0.0,
            "pg/approx_kl": float(((old - logprobs) * tokens).sum()),
            "pg/ratio_mean": float((ratio * tokens).sum()),
            "rollout_logprob_abs_diff": float(((logprobs - rollout).abs() * tokens).sum()),
        }
        if kl is not None:
            parts["kl_loss"] = float((kl.detach() * tokens * weights).sum())
            parts["kl_k1"] = float(((logprobs - experience.base_action_log_probs) * tokens).sum())
        for name, value in parts.items():
            self.totals[name] = self.totals.get(name, 0.0) + value


@ray.remote(num_gpus=1)
class GraphPolicyActor(PolicyModelActor.__ray_actor_class__):  # type: ignore[name-defined,misc]
    def init_model_from_pretrained(self, strategy: Any, pretrain: str, max_steps: int | None = None) -> None:
        _quiet_progress_bars()
        with float32_weights(strategy.args.ds.param_dtype):
            super().init_model_from_pretrained(strategy, pretrain, max_steps, None)
        args = strategy.args
        self.trainer = GraphPolicyTrainer(
            strategy, self.actor, ema_model=self.ema_model, actor_optim=self.actor_optim,
            actor_scheduler=self.actor_scheduler, micro_train_batch_size=args.train.micro_batch_size,
            tokenizer=self.tokenizer, eps_clip=args.actor.eps_clip, ema_beta=args.train.ema_beta,
        )  # fmt: skip

    def fit(self, kl_ctl: float = 0, seed: int = 0) -> dict[str, float]:
        """One optimizer step on the appended rows; the step's loss parts and statistics over all ranks. `seed`
        (the same on every rank) orders the rows' shuffle identically everywhere (see `rank_schedule`)."""
        self.trainer.totals = {}
        torch.manual_seed(seed)
        super().fit(kl_ctl)
        totals = self.strategy.all_reduce(dict(self.trainer.totals), op="sum")
        tokens = max(totals.pop("tokens"), 1.0)
        metrics = {name: totals[name] for name in LOSS_PARTS if name in totals}
        metrics |= {name: value / tokens for name, value in totals.items() if name not in LOSS_PARTS}
        metrics["tokens"] = tokens
        metrics["grad_norm"] = self.strategy.get_grad_norm(self.actor)
        return metrics

    def _model(self) -> torch.nn.Module:
        return self.actor.model.module

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors this policy trains (all weights, or the LoRA adapter), by name, on the CPU."""
        return {
            name: p.detach().float().cpu().clone() for name, p in self._model().named_parameters() if p.requires_grad
        }

    def save_served(self, folder: str) -> None:
        """The weights a vLLM server loads (a PEFT adapter in lora mode, else a Hugging Face folder); all ranks."""
        self.strategy.save_model(self.actor, self.tokenizer, folder)

    def load_checkpoint(self, tag: str) -> dict:
        """Load the DeepSpeed checkpoint `tag` (weights, optimizer, scheduler); returns its client states."""
        path = str(Path(self.strategy.args.ckpt.path) / "_actor")
        load_path, states = self.strategy.load_ckpt(self.actor.model, path, tag=tag)
        if load_path is None:
            raise FileNotFoundError(f"no checkpoint {tag} in {path}")
        return states


@ray.remote(num_gpus=1)
class GraphReferenceActor(ReferenceModelActor.__ray_actor_class__):  # type: ignore[name-defined,misc]
    """OpenRLHF's frozen reference, in float32 when the policy trains in float32."""

    def init_model_from_pretrained(self, strategy: Any, pretrain: str) -> None:
        _quiet_progress_bars()
        with float32_weights(strategy.args.ds.param_dtype):
            super().init_model_from_pretrained(strategy, pretrain)
