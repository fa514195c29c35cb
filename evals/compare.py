"""Two runs over the same items, compared item by item: metric deltas, McNemar's exact test, paired bootstrap CIs.

Deltas are B − A on the items both runs scored. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from emo_r3.evals.metrics import EvalMetrics, compute_metrics, encode, macro_weighted_f1, prf
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.prompts.label_sets import LabelSet, get_label_set

DELTA_METRICS = ("accuracy", "macro_f1", "weighted_f1", "format_rate", "accept_rate")
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted-F1",
                "format_rate": "format success", "accept_rate": "accept rate"}  # fmt: skip
BOOTSTRAP_CHUNK = 256  # resamples scored at once; bounds memory at chunk × n items


class McNemar(BaseModel):
    """The paired 2×2 table of correctness and the exact two-sided p-value on its discordant cells."""

    both_right: int
    a_only_right: int = Field(description="b: A right, B wrong")
    b_only_right: int = Field(description="c: A wrong, B right")
    both_wrong: int
    p_value: float


class BootstrapCI(BaseModel):
    """A B − A delta with its paired-bootstrap percentile interval."""

    delta: float
    low: float
    high: float


class ClassRecallDelta(BaseModel):
    label: str
    support: int
    recall_a: float
    recall_b: float
    delta: float


class Comparison(BaseModel):
    """Run B against run A on their common items: both `metrics_*` are computed on the paired items only."""

    name_a: str
    name_b: str
    n_paired: int
    only_in_a: list[str]
    only_in_b: list[str]
    metrics_a: EvalMetrics
    metrics_b: EvalMetrics
    deltas: dict[str, float]
    mcnemar: McNemar
    accuracy_ci: BootstrapCI
    macro_f1_ci: BootstrapCI
    n_resamples: int
    seed: int
    confidence: float
    alpha: float
    recall_deltas: list[ClassRecallDelta]
    verdict: str

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, A, B, B − A) as display strings: the headline metrics, then McNemar's p."""
        ma, mb, level = self.metrics_a, self.metrics_b, f"{self.confidence * 100:g}% CI"
        cis = {"accuracy": self.accuracy_ci, "macro_f1": self.macro_f1_ci}
        rows = [
            (METRIC_NAMES[name], pct(va), pct(vb), f"{pts(self.deltas[name])} pts"
             + (f" ({level} {pts(cis[name].low)}, {pts(cis[name].high)})" if name in cis else ""))
            for name, va, vb in paired_values(ma, mb)
        ]  # fmt: skip
        m = self.mcnemar
        return [*rows, ("McNemar exact", f"{m.a_only_right} only {self.name_a} right",
                        f"{m.b_only_right} only {self.name_b} right", format_p(m.p_value))]  # fmt: skip


def compare_runs(
    a: Sequence[PredictionRecord],
    b: Sequence[PredictionRecord],
    label_set: LabelSet | str,
    *,
    name_a: str = "A",
    name_b: str = "B",
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> Comparison:
    """Pair A and B on item id, then score both on the common items and test B − A (pure; seeded)."""
    labels = get_label_set(label_set)
    paired_a, paired_b, only_a, only_b = pair_records(a, b)
    if not paired_a:
        raise ValueError(f"{name_a} and {name_b} have no item id in common: nothing to compare")
    metrics_a, metrics_b = compute_metrics(paired_a, labels), compute_metrics(paired_b, labels)
    gold, pred_a = encode(paired_a, labels)
    _, pred_b = encode(paired_b, labels)
    table = mcnemar_table(pred_a == gold, pred_b == gold)
    acc_ci, f1_ci = paired_bootstrap(gold, pred_a, pred_b, len(labels.labels), n_resamples, seed, confidence)
    deltas = metric_deltas(metrics_a, metrics_b)
    return Comparison(
        name_a=name_a, name_b=name_b, n_paired=len(paired_a), only_in_a=only_a, only_in_b=only_b,
        metrics_a=metrics_a, metrics_b=metrics_b, deltas=deltas, mcnemar=table,
        accuracy_ci=BootstrapCI(delta=deltas["accuracy"], low=acc_ci[0], high=acc_ci[1]),
        macro_f1_ci=BootstrapCI(delta=deltas["macro_f1"], low=f1_ci[0], high=f1_ci[1]),
        n_resamples=n_resamples, seed=seed, confidence=confidence, alpha=alpha,
        recall_deltas=recall_deltas(metrics_a, metrics_b),
        verdict=verdict(deltas["accuracy"], table.p_value, alpha, name_a, name_b),
    )  # fmt: skip


def pair_records(
    a: Sequence[PredictionRecord], b: Sequence[PredictionRecord]
) -> tuple[list[PredictionRecord], list[PredictionRecord], list[str], list[str]]:
    """(A's common records, B's in the same order, ids only in A, ids only in B); ids must be unique per run
    and a common item must carry the same gold label in both."""
    by_id_a, by_id_b = unique_by_id(a, "A"), unique_by_id(b, "B")
    common = [item for item in by_id_a if item in by_id_b]
    mismatched = [f"{i!r}: {by_id_a[i].label!r} vs {by_id_b[i].label!r}" for i in common
                  if by_id_a[i].label != by_id_b[i].label]  # fmt: skip
    if mismatched:
        raise ValueError(f"gold labels differ between the runs for {len(mismatched)} item(s): {mismatched[:5]}")
    return (
        [by_id_a[i] for i in common], [by_id_b[i] for i in common],
        [i for i in by_id_a if i not in by_id_b], [i for i in by_id_b if i not in by_id_a],
    )  # fmt: skip


def unique_by_id(records: Sequence[PredictionRecord], side: str) -> dict[str, PredictionRecord]:
    """Records keyed by id, in input order; a repeated id is an error (pairing would be ambiguous)."""
    out: dict[str, PredictionRecord] = {}
    for record in records:
        if record.id in out:
            raise ValueError(f"run {side} has item id {record.id!r} more than once")
        out[record.id] = record
    return out


def headline_values(m: EvalMetrics) -> dict[str, float]:
    """The compared metrics of one run: accuracy, macro-F1, weighted-F1, format rate, accept rate."""
    return {name: m.reflection.accept_rate if name == "accept_rate" else getattr(m, name) for name in DELTA_METRICS}


def paired_values(a: EvalMetrics, b: EvalMetrics) -> list[tuple[str, float, float]]:
    """(metric, A's value, B's value) for each compared metric."""
    values_a, values_b = headline_values(a), headline_values(b)
    return [(name, values_a[name], values_b[name]) for name in DELTA_METRICS]


def metric_deltas(a: EvalMetrics, b: EvalMetrics) -> dict[str, float]:
    """B − A for accuracy, macro-F1, weighted-F1, format rate and accept rate."""
    return {name: vb - va for name, va, vb in paired_values(a, b)}


def mcnemar_table(right_a: np.ndarray, right_b: np.ndarray) -> McNemar:
    """The 2×2 paired correctness table and mcnemar_exact_p(b, c)."""
    b = int((right_a & ~right_b).sum())
    c = int((~right_a & right_b).sum())
    return McNemar(
        both_right=int((right_a & right_b).sum()), a_only_right=b, b_only_right=c,
        both_wrong=int((~right_a & ~right_b).sum()), p_value=mcnemar_exact_p(b, c),
    )  # fmt: skip


def mcnemar_exact_p(b: int, c: int) -> float:
    """p = min(1, 2 · Σ_{k=0}^{min(b,c)} C(b+c, k) / 2^(b+c)), the exact binomial test; 1 when b + c = 0."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def paired_bootstrap(
    gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int, n_resamples: int, seed: int, confidence: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile CIs of (B − A) accuracy and macro-F1 over item resamples drawn with replacement, same for both."""
    rng = np.random.default_rng(seed)
    acc, f1 = [], []
    for start in range(0, n_resamples, BOOTSTRAP_CHUNK):
        idx = rng.integers(0, len(gold), size=(min(BOOTSTRAP_CHUNK, n_resamples - start), len(gold)))
        acc_a, f1_a = resample_scores(gold[idx], pred_a[idx], k)
        acc_b, f1_b = resample_scores(gold[idx], pred_b[idx], k)
        acc.append(acc_b - acc_a)
        f1.append(f1_b - f1_a)
    tail = (1 - confidence) / 2 * 100
    lo_hi = (tail, 100 - tail)
    acc_ci, f1_ci = np.percentile(np.concatenate(acc), lo_hi), np.percentile(np.concatenate(f1), lo_hi)
    return (float(acc_ci[0]), float(acc_ci[1])), (float(f1_ci[0]), float(f1_ci[1]))


def resample_scores(gold: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of each row of (resamples × items) label indices; pred = k means "(none)"."""
    rows = np.arange(gold.shape[0])[:, None] * (k + 1)
    size = gold.shape[0] * (k + 1)
    correct = gold == pred

    def counts(index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount((rows + index).ravel(), weights=weights, minlength=size).reshape(-1, k + 1)[:, :k]

    support, predicted, tp = counts(gold), counts(pred), counts(gold, correct.ravel().astype(float))
    _, _, f1 = prf(tp, predicted, support)
    macro, _ = macro_weighted_f1(f1, predicted, support)
    return correct.mean(axis=1), macro


def recall_deltas(a: EvalMetrics, b: EvalMetrics) -> list[ClassRecallDelta]:
    """Per label with gold support: recall_B − recall_A."""
    return [
        ClassRecallDelta(label=ca.label, support=ca.support, recall_a=ca.recall, recall_b=cb.recall,
                         delta=cb.recall - ca.recall)
        for ca, cb in zip(a.per_class, b.per_class, strict=True)
        if ca.support > 0
    ]  # fmt: skip


def verdict(delta: float, p_value: float, alpha: float, name_a: str, name_b: str) -> str:
    """One line: "B is better than A on accuracy: +4.1 pts, p=0.003", or "no significant difference (...)"."""
    pts, p = f"{delta * 100:+.1f} pts", format_p(p_value)
    if p_value >= alpha:
        return f"no significant difference in accuracy between {name_a} and {name_b}: {pts}, {p}"
    direction = "better" if delta > 0 else "worse"
    return f"{name_b} is {direction} than {name_a} on accuracy: {pts}, {p}"


def pct(value: float | None) -> str:
    """0.8333 → "83.3%"; None → "n/a"."""
    return "n/a" if value is None else f"{value * 100:.1f}%"


def pts(value: float) -> str:
    """A difference of fractions in percentage points: 0.041 → "+4.1"."""
    return f"{value * 100:+.1f}"


def format_p(p_value: float) -> str:
    """p=0.003 style; p<0.001 below that."""
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"
