"""Group-relative advantage estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline) and their broadcast to calls/tokens.

All functions are pure numpy: `rewards` is one scalar per trajectory (or per trajectory×role), `groups` one hashable
key per reward; rewards sharing a key form a group (same prompt, or prompt×role: see `group_keys`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

EPS = 1e-6

Array = NDArray[np.float64]


def group_keys(prompt_ids: Sequence[Hashable], roles: Sequence[Hashable] | None = None) -> list[Hashable]:
    """Group key per sample: the prompt id, or (prompt id, role) when roles are given."""
    if roles is None:
        return list(prompt_ids)
    if len(roles) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompt ids but {len(roles)} roles")
    return list(zip(prompt_ids, roles, strict=True))


def _group_index(groups: Sequence[Hashable], n: int) -> tuple[NDArray[np.int64], int]:
    if len(groups) != n:
        raise ValueError(f"{n} rewards but {len(groups)} group keys")
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)
    return ids, len(index)


def _group_stats(rewards: ArrayLike, groups: Sequence[Hashable]) -> tuple[Array, Array, Array, Array]:
    """Per-sample rewards, group mean, group unbiased std (0 for a group of 1), and group size."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    ids, k = _group_index(groups, r.size)
    size = np.bincount(ids, minlength=k).astype(np.float64)
    total = np.bincount(ids, weights=r, minlength=k)
    mean = total / np.maximum(size, 1)
    sq = np.bincount(ids, weights=(r - mean[ids]) ** 2, minlength=k)
    std = np.sqrt(np.where(size > 1, sq / np.maximum(size - 1, 1), 0.0))
    return r, mean[ids], std[ids], size[ids]


def grpo(rewards: ArrayLike, groups: Sequence[Hashable]) -> Array:
    """A_i = (r_i − mean_g) / (std_g + 1e-6), std unbiased (ddof=1); a group of one gets 0."""
    r, mean, std, _ = _group_stats(rewards, groups)
    return (r - mean) / (std + EPS)


def dr_grpo(rewards: ArrayLike, groups: Sequence[Hashable]) -> Array:
    """A_i = r_i − mean_g (Dr. GRPO: no std normalisation)."""
    r, mean, _, _ = _group_stats(rewards, groups)
    return r - mean


def rloo(rewards: ArrayLike, groups: Sequence[Hashable]) -> Array:
    """A_i = r_i − (Σ_g r − r_i)/(n_g − 1) = n_g/(n_g − 1)·(r_i − mean_g); a group of one gets 0."""
    r, mean, _, size = _group_stats(rewards, groups)
    return np.where(size > 1, size / np.maximum(size - 1, 1) * (r - mean), 0.0)


def reinforce_baseline(rewards: ArrayLike, groups: Sequence[Hashable]) -> Array:
    """A_i = (r_i − mean_g) / (std_batch(r − mean_g) + 1e-6) (REINFORCE++-baseline, unbiased batch std)."""
    r, mean, _, _ = _group_stats(rewards, groups)
    centred = r - mean
    std = centred.std(ddof=1) if centred.size > 1 else 0.0
    return centred / (std + EPS)


def broadcast(traj_advantages: ArrayLike, call_traj_index: ArrayLike) -> Array:
    """A_call = A_{traj(call)}: every call of a trajectory gets its trajectory's advantage."""
    adv = np.asarray(traj_advantages, dtype=np.float64).reshape(-1)
    idx = np.asarray(call_traj_index, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= adv.size):
        raise IndexError(f"call trajectory index out of range for {adv.size} trajectories")
    return adv[idx]


def trajectory_token_weights(call_traj_index: ArrayLike, call_token_counts: ArrayLike) -> Array:
    """w_call = 1 / Σ_{calls c of traj(call)} T_c per token, so each trajectory's tokens sum to 1.

    Returns the weight of one token of each call (a per-call array); multiply by T_call for the call's share.
    Calls with no tokens get weight 0; a trajectory with no tokens contributes nothing.
    """
    idx = np.asarray(call_traj_index, dtype=np.int64).reshape(-1)
    counts = np.asarray(call_token_counts, dtype=np.float64).reshape(-1)
    if idx.size != counts.size:
        raise ValueError(f"{idx.size} calls but {counts.size} token counts")
    if (counts < 0).any():
        raise ValueError("token counts must be non-negative")
    if idx.size == 0:
        return np.zeros(0)
    per_traj = np.bincount(idx, weights=counts)[idx]
    return np.where((per_traj > 0) & (counts > 0), 1.0 / np.maximum(per_traj, 1.0), 0.0)


ESTIMATORS = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo, "reinforce_baseline": reinforce_baseline}


def role_advantages(
    rewards: Sequence[dict[str, float]],
    prompts: Sequence[Hashable],
    *,
    estimator: str = "grpo",
    streams: dict[str, str] | None = None,
) -> list[dict[str, float]]:
    """A[traj][role] = estimator(R[·][stream(role)], prompts)[traj]: one estimator call per reward stream.

    Roles in one stream share one reward per trajectory (e.g. perceiver and reasoner share the trajectory reward)
    and count ONCE in its group, so a group's statistics are those of its trajectories. Each stream is estimated
    on its own: its groups are its prompts, and a batch-level statistic (REINFORCE++-baseline's whitening std) is
    taken over that stream's rewards only, so a role with a reward of its own (the reflector) is normalised only
    against its own kind and never moves another stream's advantages. `streams` maps role -> stream name;
    default: each role its own stream.
    """
    if len(rewards) != len(prompts):
        raise ValueError(f"{len(rewards)} reward sets but {len(prompts)} prompts")
    stream_of = {role: (streams or {}).get(role, role) for per_role in rewards for role in per_role}
    by_stream: dict[str, dict[int, float]] = {}
    for t, per_role in enumerate(rewards):
        for role, reward in per_role.items():
            shared = by_stream.setdefault(stream_of[role], {}).setdefault(t, reward)
            if shared != reward:
                raise ValueError(f"roles of stream {stream_of[role]!r} got different rewards in trajectory {t}")
    by_pair: dict[tuple[int, str], float] = {}
    for stream, per_traj in by_stream.items():
        flat = ESTIMATORS[estimator](list(per_traj.values()), [prompts[t] for t in per_traj])
        by_pair.update({(t, stream): float(a) for t, a in zip(per_traj, flat, strict=True)})
    return [{role: by_pair[(t, stream_of[role])] for role in per_role} for t, per_role in enumerate(rewards)]
