"""Policy-loss math for EMO-R3: dual-clip PPO surrogate, truncated importance sampling, KL-to-reference loss.

All inputs are per-token tensors of shape (batch, seq_len); `mask` is 1 on response tokens, 0 elsewhere.
Conventions follow OpenRLHF 0.11.2 (`openrlhf.models.loss.PolicyLoss`, `openrlhf.models.utils.compute_approx_kl`).
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token-mean", "seq-mean-token-mean"]
KLKind = Literal["k1", "k2", "k3"]

LOG_RATIO_CLAMP = 20.0  # bound on log(pi/pi_old) before exp, as OpenRLHF does for PPO
KL_CLAMP = 10.0  # bound on each per-token KL estimate, as OpenRLHF does


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """token-mean = Σ_{i,t} m_it·x_it / Σ_{i,t} m_it (0 when no token is valid)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """seq-mean-token-mean = mean over non-empty sequences i of (Σ_t m_it·x_it / Σ_t m_it)."""
    mask = mask.to(values.dtype)
    counts = mask.sum(dim=-1)
    seq_means = (values * mask).sum(dim=-1) / counts.clamp(min=1.0)
    nonempty = (counts > 0).to(values.dtype)
    return (seq_means * nonempty).sum() / nonempty.sum().clamp(min=1.0)


def masked_weighted_sum(
    values: torch.Tensor, mask: torch.Tensor, token_weights: torch.Tensor, num_trajectories: float | None = None
) -> torch.Tensor:
    """weighted = Σ_{i,t} m_it·w_it·x_it / N_traj, with N_traj = Σ m·w by default (weights sum to 1 per trajectory)."""
    weights = mask.to(values.dtype) * token_weights.to(values.dtype)
    denom = weights.sum().clamp(min=1e-8) if num_trajectories is None else float(num_trajectories)
    return (values * weights).sum() / denom


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation = "token-mean",
    token_weights: torch.Tensor | None = None,
    num_trajectories: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token matrix to a scalar; `token_weights`, when given, overrides `aggregation`."""
    if token_weights is not None:
        return masked_weighted_sum(values, mask, token_weights, num_trajectories)
    if aggregation == "token-mean":
        return masked_token_mean(values, mask)
    if aggregation == "seq-mean-token-mean":
        return masked_seq_mean_token_mean(values, mask)
    raise ValueError(f"unknown aggregation {aggregation!r}")


def truncated_importance_weights(
    trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float = 2.0
) -> torch.Tensor:
    """TIS: w_t = min(exp(logp_trainer − logp_rollout), cap), detached (a correction weight, not a gradient path)."""
    return (trainer_logprobs - rollout_logprobs).detach().exp().clamp(max=cap)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    dual_clip: float | None = 3.0,
    aggregation: Aggregation = "token-mean",
    token_weights: torch.Tensor | None = None,
    num_trajectories: float | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    tis_cap: float = 2.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_t = −min(r·A, clip(r, 1−ε_lo, 1+ε_hi)·A), and for A<0 min(L_t, −c·A); ×TIS weight; aggregated.

    r = exp(logp − logp_old) with the log-ratio clamped to ±20. `rollout_logprobs` (the sampler's logprobs)
    turns on truncated importance sampling with weight min(exp(logp_old − logp_rollout), `tis_cap`).
    Stats (detached): clip_frac (tokens where the clipped branch is strictly lower), dual_clip_frac,
    approx_kl = mean(logp_old − logp), ratio_mean, and tis_weight_mean when TIS is on.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    clipped = torch.min(surr1, surr2)
    if dual_clip is None:
        objective = clipped
        dual_active = torch.zeros_like(clipped, dtype=torch.bool)
    else:
        lower = dual_clip * advantages
        objective = torch.where(advantages < 0, torch.max(clipped, lower), clipped)
        dual_active = (advantages < 0) & (lower > clipped)
    loss_tok = -objective

    stats: dict[str, torch.Tensor] = {}
    if rollout_logprobs is not None:
        tis = truncated_importance_weights(old_logprobs, rollout_logprobs, tis_cap)
        loss_tok = tis * loss_tok
        stats["tis_weight_mean"] = masked_token_mean(tis, mask).detach()

    loss = aggregate(loss_tok, mask, aggregation, token_weights, num_trajectories)
    with torch.no_grad():
        stats["clip_frac"] = masked_token_mean(torch.lt(surr2, surr1).to(ratio.dtype), mask)
        stats["dual_clip_frac"] = masked_token_mean(dual_active.to(ratio.dtype), mask)
        stats["approx_kl"] = masked_token_mean(-log_ratio, mask)
        stats["ratio_mean"] = masked_token_mean(ratio, mask)
    return loss, stats


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate, with x = logp − logp_ref: k1 = x, k2 = x²/2, k3 = exp(−x) + x − 1; clamp ±10.

    k3 ("low_var_kl") clamps x at −10 before exp, then every estimate is clamped to [−10, 10] (as OpenRLHF).
    """
    x = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        value = x
    elif kind == "k2":
        value = x.square() / 2.0
    elif kind == "k3":
        x = x.clamp(min=-KL_CLAMP)
        value = (-x).exp() + x - 1.0
    else:
        raise ValueError(f"unknown KL estimator {kind!r}")
    return value.clamp(-KL_CLAMP, KL_CLAMP)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: KLKind = "k3",
    aggregation: Aggregation = "token-mean",
    token_weights: torch.Tensor | None = None,
    num_trajectories: float | None = None,
) -> torch.Tensor:
    """L_KL = agg_t kl_penalty(logp_t, logp_ref_t); the trainer adds β·L_KL to the policy loss (β = 0.01)."""
    return aggregate(kl_penalty(logprobs, ref_logprobs, kind), mask, aggregation, token_weights, num_trajectories)
