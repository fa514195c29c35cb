"""Scores for one evaluated run: classification metrics, binary sentiment, format, reflection, latency and tokens.

Every function here is pure: the records go in, numbers come out. Rates are fractions in [0, 1]; a rate over an
empty population (no checks, no timed node, no item with a valence) is None rather than a made-up 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from emo_r3.evals.predictions import PredictionRecord
from emo_r3.prompts.label_sets import LabelSet, get_label_set

NONE_COLUMN = "(none)"  # confusion-matrix column for a missing prediction or one outside the label set


class ClassMetrics(BaseModel):
    """One label's row of the per-class table."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="gold items with this label")
    predicted: int = Field(description="items predicted as this label")


class Flips(BaseModel):
    """How the reflection loop changed the reasoner's first answer (`first_label`) into the final one."""

    wrong_to_right: int = 0
    right_to_wrong: int = 0
    wrong_to_wrong_changed: int = 0
    unchanged: int = 0
    without_first_label: int = Field(0, description="records with no first answer (errors, old records)")


class ReflectionStats(BaseModel):
    """Reflector outcomes: acceptance, check pass rates (all rounds and first round), corrections and flips."""

    accept_rate: float
    coherence_checks: int
    coherence_pass_rate: float | None
    coherence_first_pass_rate: float | None
    consistency_checks: int
    consistency_pass_rate: float | None
    consistency_first_pass_rate: float | None
    corrections: int = Field(description="sum of `rounds`: times the reflector sent an answer back")
    corrected_items: int
    correction_rate: float
    flips: Flips


class NodeLatency(BaseModel):
    """Seconds spent in one graph node per item that ran it (summed over rounds within the item)."""

    node: str
    n: int
    mean_s: float
    p50_s: float
    p95_s: float


class TokenStats(BaseModel):
    prompt_mean: float
    completion_mean: float
    prompt_total: int
    completion_total: int


class EvalMetrics(BaseModel):
    """All scores of one run over one label set. `confusion[i][j]`: gold `labels[i]`, predicted `columns[j]`."""

    label_set: str
    labels: list[str]
    n: int
    n_correct: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    per_class: list[ClassMetrics]
    columns: list[str]
    confusion: list[list[int]]
    sentiment_accuracy: float | None
    sentiment_n: int
    format_rate: float
    reflection: ReflectionStats
    latency: list[NodeLatency]
    tokens: TokenStats
    n_errors: int
    status_counts: dict[str, int]


def compute_metrics(records: Sequence[PredictionRecord], label_set: LabelSet | str) -> EvalMetrics:
    """Score a run. Errored items (status other than "ok", prediction usually None) count as wrong in accuracy
    and F1 (their prediction lands in the "(none)" column) and are also counted separately in `n_errors`."""
    labels = get_label_set(label_set)
    if not records:
        raise ValueError("no records to score: the run is empty")
    gold, pred = encode(records, labels)
    k = len(labels.labels)
    confusion = confusion_matrix(gold, pred, k)
    tp, predicted, support = np.diag(confusion[:, :k]), confusion[:, :k].sum(axis=0), confusion.sum(axis=1)
    precision, recall, f1 = prf(tp, predicted, support)
    macro, weighted = macro_weighted_f1(f1, predicted, support)
    sentiment, sentiment_n = sentiment_accuracy(records, labels)
    statuses = Counter(r.status for r in records)
    return EvalMetrics(
        label_set=labels.name,
        labels=list(labels.labels),
        n=len(records),
        n_correct=int(tp.sum()),
        accuracy=float(tp.sum() / len(records)),
        macro_f1=float(macro),
        weighted_f1=float(weighted),
        per_class=[
            ClassMetrics(label=label, precision=p, recall=r, f1=f, support=s, predicted=d)
            for label, p, r, f, s, d in zip(
                labels.labels,
                precision.tolist(),
                recall.tolist(),
                f1.tolist(),
                support.tolist(),
                predicted.tolist(),
                strict=True,
            )
        ],
        columns=[*labels.labels, NONE_COLUMN],
        confusion=confusion.tolist(),
        sentiment_accuracy=sentiment,
        sentiment_n=sentiment_n,
        format_rate=sum(r.format_ok for r in records) / len(records),
        reflection=reflection_stats(records, labels),
        latency=node_latencies(records),
        tokens=token_stats(records),
        n_errors=sum(n for status, n in statuses.items() if status != "ok"),
        status_counts=dict(sorted(statuses.items())),
    )


def encode(records: Sequence[PredictionRecord], labels: LabelSet) -> tuple[np.ndarray, np.ndarray]:
    """Gold and predicted label indices; a missing or out-of-set prediction gets index len(labels) ("(none)")."""
    index = {label: i for i, label in enumerate(labels.labels)}
    stray = [f"{r.id!r}: {r.label!r}" for r in records if r.label not in index]
    if stray:
        raise ValueError(
            f"{len(stray)} gold label(s) outside label set {labels.name!r} (e.g. {', '.join(stray[:5])}); "
            "score with the label set the items were loaded with"
        )
    gold = np.array([index[r.label] for r in records], dtype=np.int64)
    pred = np.array([index.get(r.prediction or "", len(index)) for r in records], dtype=np.int64)
    return gold, pred


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """C[i, j] = #{items: gold = i, predicted = j}, shape k × (k + 1); column k is "(none)"."""
    return np.bincount(gold * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den = 0 (no warning)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def prf(tp: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P = TP / predicted, R = TP / support, F1 = 2PR / (P + R); each 0 where its denominator is 0."""
    precision, recall = safe_divide(tp, predicted), safe_divide(tp, support)
    return precision, recall, safe_divide(2 * precision * recall, precision + recall)


def macro_weighted_f1(f1: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """macro = mean F1 over labels with support > 0 or predicted > 0; weighted = Σ support·F1 / Σ support.

    Works on the last axis, so rows of bootstrap resamples are scored in one call. A label neither in the gold
    labels nor predicted is left out of the macro mean (as scikit-learn does when it infers the labels): a
    label set larger than the test set does not drag the score down. The "(none)" column is never a class
    (scikit-learn would infer it as one with F1 = 0): `f1_score(..., labels=<in-set labels present>,
    average="macro", zero_division=0)`, cross-checked in tests/unit/test_metrics_crosscheck.py."""
    active = (support > 0) | (predicted > 0)
    macro = safe_divide((f1 * active).sum(axis=-1), active.sum(axis=-1))
    return macro, safe_divide((f1 * support).sum(axis=-1), support.sum(axis=-1))


def sentiment_accuracy(records: Sequence[PredictionRecord], labels: LabelSet) -> tuple[float | None, int]:
    """acc = #{valence(pred) = valence(gold)} / #{gold valence positive or negative}; None pred counts wrong.

    Items whose gold label is neutral (or has no valence in the set) are left out; a neutral prediction for a
    positive/negative item is wrong. Returns (accuracy or None when no item qualifies, items counted)."""
    scored = [r for r in records if labels.valence.get(r.label) in ("positive", "negative")]
    if not scored:
        return None, 0
    right = sum(r.prediction is not None and labels.valence.get(r.prediction) == labels.valence[r.label]
                for r in scored)  # fmt: skip
    return right / len(scored), len(scored)


def rate(passed: Sequence[bool]) -> float | None:
    """#{True} / #{all}; None for an empty sequence."""
    return sum(passed) / len(passed) if passed else None


def reflection_stats(records: Sequence[PredictionRecord], labels: LabelSet) -> ReflectionStats:
    """Accept rate over all items; check pass rates over every check made and over first rounds only;
    corrections = Σ rounds (the record's count of answers sent back, as in the trace store); flips."""
    coherence = [c for r in records for c in r.coherence_passed]
    consistency = [c for r in records for c in r.consistency_passed]
    corrected = sum(r.rounds > 0 for r in records)
    return ReflectionStats(
        accept_rate=sum(r.accepted for r in records) / len(records),
        coherence_checks=len(coherence),
        coherence_pass_rate=rate(coherence),
        coherence_first_pass_rate=rate([r.coherence_passed[0] for r in records if r.coherence_passed]),
        consistency_checks=len(consistency),
        consistency_pass_rate=rate(consistency),
        consistency_first_pass_rate=rate([r.consistency_passed[0] for r in records if r.consistency_passed]),
        corrections=sum(r.rounds for r in records),
        corrected_items=corrected,
        correction_rate=corrected / len(records),
        flips=count_flips(records),
    )


def flip_kind(first: str | None, final: str | None, gold: str) -> str:
    """One record's flip: wrong_to_right, right_to_wrong, wrong_to_wrong_changed, unchanged, without_first_label."""
    if first is None:
        return "without_first_label"
    if final == first:
        return "unchanged"
    if first == gold:
        return "right_to_wrong"
    return "wrong_to_right" if final == gold else "wrong_to_wrong_changed"


def count_flips(records: Sequence[PredictionRecord]) -> Flips:
    """Counts of flip_kind(first_label, prediction, label) over the records."""
    return Flips(**Counter(flip_kind(r.first_label, r.prediction, r.label) for r in records))


def node_latencies(records: Sequence[PredictionRecord]) -> list[NodeLatency]:
    """Per node (in order of first appearance), then "total" (Σ nodes per item): mean, p50, p95 (linear)."""
    nodes = list(dict.fromkeys(node for r in records for node in r.node_latency_s))
    series = {node: [r.node_latency_s[node] for r in records if node in r.node_latency_s] for node in nodes}
    if nodes:
        series["total"] = [sum(r.node_latency_s.values()) for r in records if r.node_latency_s]
    return [latency_summary(node, values) for node, values in series.items()]


def latency_summary(node: str, values: Sequence[float]) -> NodeLatency:
    """mean, median and 95th percentile (numpy's linear interpolation) of one node's seconds."""
    array = np.asarray(values, dtype=float)
    p50, p95 = np.percentile(array, [50, 95])
    return NodeLatency(node=node, n=len(array), mean_s=float(array.mean()), p50_s=float(p50), p95_s=float(p95))


def token_stats(records: Sequence[PredictionRecord]) -> TokenStats:
    """Mean and total prompt/completion tokens per item, over all items (errors included)."""
    prompt, completion = sum(r.prompt_tokens for r in records), sum(r.completion_tokens for r in records)
    return TokenStats(
        prompt_mean=prompt / len(records), completion_mean=completion / len(records),
        prompt_total=prompt, completion_total=completion,
    )  # fmt: skip


def exact_match_accuracy(responses_boxed: Sequence[str | None], golds: Sequence[str]) -> float:
    """Paper-parity accuracy: mean of [boxed.lower() == gold.lower()]; None is wrong; no stripping, no synonyms."""
    if len(responses_boxed) != len(golds):
        raise ValueError(f"{len(responses_boxed)} responses for {len(golds)} gold labels")
    if not golds:
        raise ValueError("no responses to score")
    right = sum(r is not None and r.lower() == g.lower() for r, g in zip(responses_boxed, golds, strict=True))
    return right / len(golds)
