"""One policy update on a mini-batch of rows: clipped policy gradient + β·KL, micro-batched, every policy at once.

The loss of the whole mini-batch is L = Σ_rows Σ_t w_t·ℓ_t / D (weights and denominator from the aggregation), so
micro-batches add up to exactly the mini-batch loss whatever their size, and each policy gets the gradient of the
rows it produced. Then every policy's gradient is clipped on its own and one optimizer step updates them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from emo_r3.training.config import AlgorithmConfig, OptimConfig
from emo_r3.training.logprobs import micro_batch_logprobs, micro_batches
from emo_r3.training.losses import kl_loss, policy_loss
from emo_r3.training.policies import Policy, PolicySet
from emo_r3.training.rows import RowKey, TrainingRow, row_key, rows_by_policy


def token_weights(rows: Sequence[TrainingRow], aggregation: str) -> tuple[list[float], float]:
    """Per-row token weight w and denominator D with L = Σ w·ℓ / D.

    trajectory: w = 1/T_traj, D = #trajectories; token-mean: w = 1, D = Σ T; seq-mean-token-mean: w = 1/T_row,
    D = #rows.
    """
    if aggregation == "trajectory":
        return [row.token_weight for row in rows], float(len({row.trajectory_id for row in rows}))
    if aggregation == "token-mean":
        return [1.0] * len(rows), float(sum(len(row.completion_token_ids) for row in rows))
    if aggregation == "seq-mean-token-mean":
        return [1.0 / len(row.completion_token_ids) for row in rows], float(len(rows))
    raise ValueError(f"unknown aggregation {aggregation!r}")


@torch.no_grad()
def frozen_logprobs(
    policies: PolicySet, rows: Sequence[TrainingRow], optim: OptimConfig, *, reference: bool
) -> dict[RowKey, torch.Tensor]:
    """log π_old (current weights) or log π_ref (frozen reference) of every row's completion tokens."""
    result: dict[RowKey, torch.Tensor] = {}
    for name, policy_rows in rows_by_policy(rows).items():
        policy = policies.policies[name]
        with policy.reference_model() if reference else policy.active() as loaded:
            for batch in micro_batches(policy_rows, optim.micro_batch_tokens):
                values = micro_batch_logprobs(loaded, batch, chunk_size=optim.logprob_chunk)
                result.update((row_key(row), value) for row, value in zip(batch.rows, values, strict=True))
    return result


@dataclass
class UpdateResult:
    metrics: dict[str, float]
    row_values: dict[RowKey, dict[str, float]] = field(default_factory=dict)


class _Totals:
    """Token-weighted sums of per-micro-batch statistics."""

    def __init__(self) -> None:
        self.weighted: dict[str, float] = {}
        self.parts: dict[str, float] = {}
        self.tokens = 0.0

    def add(self, stats: dict[str, torch.Tensor], tokens: int, parts: dict[str, float]) -> None:
        self.tokens += tokens
        for name, value in stats.items():
            self.weighted[name] = self.weighted.get(name, 0.0) + float(value) * tokens
        for name, value in parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + value

    def metrics(self) -> dict[str, float]:
        means = {name: total / max(self.tokens, 1.0) for name, total in self.weighted.items()}
        return {**self.parts, **means, "tokens": self.tokens}


def update(
    policies: PolicySet,
    optimizer: torch.optim.Optimizer,
    rows: Sequence[TrainingRow],
    algo: AlgorithmConfig,
    optim: OptimConfig,
    *,
    old: dict[RowKey, torch.Tensor] | None = None,
    ref: dict[RowKey, torch.Tensor] | None = None,
) -> UpdateResult:
    """Backward over every micro-batch of every policy, clip each policy's gradient, one optimizer step.

    `old` None means on-policy (one update per rollout): π_old = the current weights, detached from this forward.
    """
    weights, denominator = token_weights(rows, algo.aggregation)
    weight_of = {row_key(row): w for row, w in zip(rows, weights, strict=True)}
    totals, result = _Totals(), UpdateResult(metrics={})
    for name, policy_rows in rows_by_policy(rows).items():
        policy = policies.policies[name]
        _backward_policy(policy, policy_rows, weight_of, denominator, algo, optim, old, ref, totals, result)
    grad_norms = {
        f"grad_norm/{name}": float(torch.nn.utils.clip_grad_norm_(policy.parameters(), optim.grad_clip))
        for name, policy in policies.policies.items()
    }
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = totals.metrics()
    metrics["loss"] = metrics.get("pg_loss", 0.0) + algo.kl_coef * metrics.get("kl_loss", 0.0)
    result.metrics = {**metrics, **grad_norms}
    return result


def _backward_policy(
    policy: Policy,
    rows: list[TrainingRow],
    weight_of: dict[RowKey, float],
    denominator: float,
    algo: AlgorithmConfig,
    optim: OptimConfig,
    old: dict[RowKey, torch.Tensor] | None,
    ref: dict[RowKey, torch.Tensor] | None,
    totals: _Totals,
    result: UpdateResult,
) -> None:
    with policy.active() as loaded:
        loaded.model.train()
        try:
            for batch in micro_batches(rows, optim.micro_batch_tokens):
                values = micro_batch_logprobs(loaded, batch, chunk_size=optim.logprob_chunk)
                loss, parts, stats = _micro_batch_loss(batch.rows, values, weight_of, denominator, algo, old, ref)
                loss.backward()
                totals.add(stats, sum(len(row.completion_token_ids) for row in batch.rows), parts)
                for row, value in zip(batch.rows, values, strict=True):
                    result.row_values[row_key(row)] = _row_values(row, value, ref)
        finally:
            loaded.model.eval()


def _per_token(rows: list[TrainingRow], per_row: list[float], device: torch.device) -> torch.Tensor:
    """A per-row scalar repeated over that row's completion tokens, as a (1, N) tensor."""
    lengths = torch.tensor([len(row.completion_token_ids) for row in rows])
    return torch.tensor(per_row, dtype=torch.float32).repeat_interleave(lengths)[None].to(device)


def _micro_batch_loss(
    rows: list[TrainingRow],
    values: list[torch.Tensor],
    weight_of: dict[RowKey, float],
    denominator: float,
    algo: AlgorithmConfig,
    old: dict[RowKey, torch.Tensor] | None,
    ref: dict[RowKey, torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """ℓ = PG(logπ, logπ_old, A; clip, dual-clip, TIS) + β·KL(logπ ‖ logπ_ref) over the rows' tokens, as (1, N).

    Returns the loss, its parts (which add up over micro-batches) and token-mean statistics.
    """
    logprobs = torch.cat(values)[None]
    device = logprobs.device
    old_lp = torch.cat([old[row_key(r)] for r in rows])[None] if old is not None else logprobs.detach()
    rollout = torch.tensor([lp for r in rows for lp in r.rollout_logprobs], device=device)[None]
    advantages = _per_token(rows, [r.advantage for r in rows], device)
    weights = _per_token(rows, [weight_of[row_key(r)] for r in rows], device)
    mask = torch.ones_like(logprobs)
    loss, stats = policy_loss(
        logprobs, old_lp.to(logprobs.dtype), advantages, mask,
        clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
        token_weights=weights, num_trajectories=denominator,
        rollout_logprobs=rollout if algo.tis_cap is not None else None, tis_cap=algo.tis_cap or 1.0,
    )  # fmt: skip
    parts = {"pg_loss": float(loss.detach())}
    stats = {f"pg/{k}": v for k, v in stats.items()}
    if ref is not None and algo.kl_coef > 0:
        ref_lp = torch.cat([ref[row_key(r)] for r in rows])[None]
        kl = kl_loss(
            logprobs, ref_lp, mask, kind=algo.kl_estimator, token_weights=weights, num_trajectories=denominator
        )
        loss = loss + algo.kl_coef * kl
        parts["kl_loss"] = float(kl.detach())
        stats["kl_k1"] = (logprobs.detach() - ref_lp).mean()
    stats["rollout_logprob_abs_diff"] = (logprobs.detach() - rollout).abs().mean()
    return loss, parts, stats


def _row_values(row: TrainingRow, logprobs: torch.Tensor, ref: dict[RowKey, torch.Tensor] | None) -> dict[str, float]:
    values = {
        "tokens": float(len(row.completion_token_ids)),
        "logprob_mean": float(logprobs.detach().mean()),
        "rollout_logprob_mean": sum(row.rollout_logprobs) / len(row.rollout_logprobs),
    }
    if ref is not None:
        values["kl_k1"] = float((logprobs.detach() - ref[row_key(row)]).mean())
    return values
