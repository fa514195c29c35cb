"""One step's update on the policy groups: the rows as OpenRLHF `Experience`s, π_old from each policy's ranks and
π_ref from its reference ranks (both before any update), then per mini-batch one `fit` of every policy with each
row's loss weight, as the `local` trainer's `update` weighs it (`algorithm.aggregation`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ray
from openrlhf.trainer.ppo_utils.experience import Experience
from transformers import ProcessorMixin

from emo_r3.training.cluster.actors import LOSS_PARTS
from emo_r3.training.cluster.experiences import LOSS_WEIGHT, row_experience, with_logprobs
from emo_r3.training.cluster.policy_group import PendingFit, PolicyGroup
from emo_r3.training.config import AlgorithmConfig
from emo_r3.training.logprobs import image_inputs
from emo_r3.training.rows import RowKey, TrainingRow, row_key, rows_by_policy
from emo_r3.training.scoring import prompt_mini_batches
from emo_r3.training.update import token_weights


@dataclass
class GroupUpdate:
    metrics: list[dict[str, float]]  # one per mini-batch, as the `local` trainer's update reports them
    row_values: dict[RowKey, dict[str, float]]  # per row: tokens, logprob means (and KL), for the trace store
    timings: dict[str, float]  # time/forward_s (π_old, π_ref), time/fit_s: in all, and per group (…_s/<policy>)


def update_groups(
    groups: Mapping[str, PolicyGroup],
    rows: Sequence[TrainingRow],
    processors: Mapping[str, ProcessorMixin | None],
    algo: AlgorithmConfig,
    seed: int,
) -> GroupUpdate:
    """Train every policy group on its rows: one optimizer step per prompt mini-batch. `seed` (per step) fixes how
    the ranks shuffle their rows and any dropout, so a resumed run repeats an uninterrupted one."""
    experiences = {row_key(row): _experience(row, processors[row.policy]) for row in rows}
    timings = _add_logprobs(groups, experiences, rows, with_reference=algo.kl_coef > 0)
    metrics, row_values = [], {}
    for index, batch in enumerate(prompt_mini_batches(rows, algo.mini_batches)):
        weights, denominator = token_weights(batch, algo.aggregation)
        for row, weight in zip(batch, weights, strict=True):
            experiences[row_key(row)].info[LOSS_WEIGHT][0] = weight / denominator
        started = time.perf_counter()
        pending = {
            name: groups[name].submit_fit(
                [experiences[row_key(row)] for row in policy_rows], algo.kl_coef, seed + index
            )
            for name, policy_rows in rows_by_policy(batch).items()
        }  # every group steps at once, each on its own GPUs
        for name, seconds in _finish_times(pending, started).items():
            timings[f"time/fit_s/{name}"] = timings.get(f"time/fit_s/{name}", 0.0) + seconds
        timings["time/fit_s"] = timings.get("time/fit_s", 0.0) + time.perf_counter() - started
        metrics.append(merged_metrics({name: fit.metrics() for name, fit in pending.items()}, algo.kl_coef))
        row_values |= {row_key(row): _row_values(row, experiences[row_key(row)]) for row in batch}
    return GroupUpdate(metrics, row_values, timings)


def _finish_times(pending: Mapping[str, PendingFit], started: float) -> dict[str, float]:
    """Seconds from `started` until each group's step finished (all its ranks)."""
    waiting = {ref: name for name, fit in pending.items() for ref in fit.refs}
    finished: dict[str, float] = {}
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1)
        name = waiting.pop(ready[0])
        if name not in waiting.values():
            finished[name] = time.perf_counter() - started
    return finished


def _experience(row: TrainingRow, processor: ProcessorMixin | None) -> Experience:
    pixels = image_inputs(processor, row.images) if row.images and processor is not None else None
    return row_experience(row, 0.0, pixels)


def _add_logprobs(
    groups: Mapping[str, PolicyGroup],
    experiences: Mapping[RowKey, Experience],
    rows: Sequence[TrainingRow],
    *,
    with_reference: bool,
) -> dict[str, float]:
    """π_old and π_ref of every row, group by group; the seconds each group's forwards took."""
    timings = {"time/forward_s": 0.0}
    for name, policy_rows in rows_by_policy(rows).items():
        started = time.perf_counter()
        batch = [experiences[row_key(row)] for row in policy_rows]
        old = groups[name].logprobs(batch, reference=False)
        reference = groups[name].logprobs(batch, reference=True) if with_reference else [None] * len(batch)
        for experience, old_lp, ref_lp in zip(batch, old, reference, strict=True):
            with_logprobs(experience, old_lp, ref_lp)
        timings[f"time/forward_s/{name}"] = time.perf_counter() - started
        timings["time/forward_s"] += timings[f"time/forward_s/{name}"]
    return timings


def merged_metrics(results: Mapping[str, dict[str, float]], kl_coef: float) -> dict[str, float]:
    """One mini-batch's metrics over its policies, as the `local` trainer reports them: loss parts and tokens add
    up, statistics are token means, and each policy has its own gradient norm."""
    merged: dict[str, float] = {}
    tokens = sum(result["tokens"] for result in results.values())
    for name, result in results.items():
        for key, value in result.items():
            if key == "grad_norm":
                merged[f"grad_norm/{name}"] = value
            elif key in LOSS_PARTS or key == "tokens":
                merged[key] = merged.get(key, 0.0) + value
            else:
                merged[key] = merged.get(key, 0.0) + value * result["tokens"] / max(tokens, 1.0)
    merged["loss"] = merged.get("pg_loss", 0.0) + kl_coef * merged.get("kl_loss", 0.0)
    return merged


def _row_values(row: TrainingRow, experience: Experience) -> dict[str, float]:
    mask = experience.action_mask[0]
    old = experience.action_log_probs[0][mask]
    values = {
        "tokens": float(len(row.completion_token_ids)),
        "logprob_mean": float(old.mean()),
        "rollout_logprob_mean": sum(row.rollout_logprobs) / len(row.rollout_logprobs),
    }
    reference = experience.base_action_log_probs
    if reference is not None and reference.abs().sum() > 0:
        values["kl_k1"] = float((old - reference[0][mask]).mean())
    return values
