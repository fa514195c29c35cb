"""evals/metrics.py against scikit-learn and evals/compare.py against scipy, on many random cases and edge cases.

test_eval_metrics.py checks hand-worked numbers; here every metric meets an independent implementation. The one
deliberate convention: a missing or out-of-set prediction (the "(none)" column) is never a class. scikit-learn,
inferring labels, would average a "(none)" class with F1 = 0 into macro-F1, so it is called with `labels=` the
in-set labels present in the gold or the predictions, and `zero_division=0` (this project's 0 for an empty
denominator).
"""

from __future__ import annotations

import random as random_module
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from emo_r3.evals.compare import compare_runs, mcnemar_exact_p, mcnemar_table, paired_bootstrap, resample_scores
from emo_r3.evals.metrics import (
    NONE_COLUMN,
    EvalMetrics,
    compute_metrics,
    count_flips,
    exact_match_accuracy,
    latency_summary,
)
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.prompts.label_sets import LabelSet

NAMES = ("joy", "fear", "anger", "sadness", "awe", "disgust")
VALENCES = ("positive", "negative", "neutral", None)
STRAY = "not-a-label"  # an out-of-set prediction: lands in the "(none)" column like a missing one


def label_set(k: int, valences: tuple[str | None, ...] = ()) -> LabelSet:
    labels = NAMES[:k]
    return LabelSet(name="crosscheck", labels=labels,
                    valence={lab: v for lab, v in zip(labels, valences, strict=False) if v is not None})  # fmt: skip


def records(gold: list[str], pred: list[str | None], first: list[str | None] | None = None) -> list[PredictionRecord]:
    first = first or [None] * len(gold)
    return [
        PredictionRecord(id=str(i), status="ok" if p else "error", label=g, label_set="crosscheck", prediction=p,
                         first_label=f)
        for i, (g, p, f) in enumerate(zip(gold, pred, first, strict=True))
    ]  # fmt: skip


@st.composite
def runs(draw: st.DrawFn, max_n: int = 40) -> tuple[LabelSet, list[PredictionRecord]]:
    """A label set of 2–6 labels and 1–max_n records; predictions may be missing, out of set, or any label."""
    k = draw(st.integers(2, len(NAMES)))
    labels = label_set(k, tuple(draw(st.lists(st.sampled_from(VALENCES), min_size=k, max_size=k))))
    # A gold subset makes empty classes and labels never predicted common, not a rare draw.
    gold_pool = draw(st.lists(st.sampled_from(labels.labels), min_size=1, max_size=k, unique=True))
    answers = st.sampled_from([*labels.labels, None, STRAY])
    n = draw(st.integers(1, max_n))
    gold = draw(st.lists(st.sampled_from(gold_pool), min_size=n, max_size=n))
    pred = draw(st.lists(answers, min_size=n, max_size=n))
    first = draw(st.lists(answers, min_size=n, max_size=n))
    return labels, records(gold, pred, first)


def sklearn_targets(recs: list[PredictionRecord], labels: LabelSet) -> tuple[list[str], list[str]]:
    return [r.label for r in recs], [r.prediction if r.prediction in labels.labels else NONE_COLUMN for r in recs]


def sklearn_headline(y_true: list[str], y_pred: list[str], labels: LabelSet) -> dict[str, float]:
    """Accuracy; macro-F1 over the in-set labels in the gold or the predictions; weighted-F1 over all in-set labels."""
    active = [lab for lab in labels.labels if lab in set(y_true) | set(y_pred)]
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, labels=active, average="macro", zero_division=0.0),
        "weighted_f1": f1_score(y_true, y_pred, labels=list(labels.labels), average="weighted", zero_division=0.0),
    }


def assert_matches_sklearn(metrics: EvalMetrics, recs: list[PredictionRecord], labels: LabelSet) -> None:
    y_true, y_pred = sklearn_targets(recs, labels)
    in_set = list(labels.labels)
    headline = sklearn_headline(y_true, y_pred, labels)
    assert (metrics.accuracy, metrics.macro_f1, metrics.weighted_f1) == pytest.approx(
        (headline["accuracy"], headline["macro_f1"], headline["weighted_f1"]), abs=1e-12
    )
    assert metrics.n_correct == accuracy_score(y_true, y_pred, normalize=False)
    # sklearn's square matrix over labels + "(none)"; the "(none)" gold row is always empty, so ours omits it.
    full = confusion_matrix(y_true, y_pred, labels=[*in_set, NONE_COLUMN])
    assert metrics.columns == [*in_set, NONE_COLUMN]
    assert metrics.confusion == full[: len(in_set)].tolist()
    assert not full[len(in_set)].any()
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=in_set, average=None, zero_division=0.0
    )
    assert [c.label for c in metrics.per_class] == in_set
    assert [c.precision for c in metrics.per_class] == pytest.approx(precision, abs=1e-12)
    assert [c.recall for c in metrics.per_class] == pytest.approx(recall, abs=1e-12)
    assert [c.f1 for c in metrics.per_class] == pytest.approx(f1, abs=1e-12)
    assert [c.support for c in metrics.per_class] == support.tolist()
    assert [c.predicted for c in metrics.per_class] == [y_pred.count(lab) for lab in in_set]


@settings(max_examples=120, deadline=None)
@given(runs())
def test_classification_metrics_match_sklearn(run: tuple[LabelSet, list[PredictionRecord]]) -> None:
    labels, recs = run
    assert_matches_sklearn(compute_metrics(recs, labels), recs, labels)


EDGE_CASES = {
    "all correct": (["joy", "fear", "anger"], ["joy", "fear", "anger"]),
    "a label never predicted": (["joy", "fear", "fear", "anger"], ["joy", "joy", "joy", "anger"]),
    "a label with no gold item": (["joy", "joy", "fear"], ["anger", "joy", "fear"]),
    "labels neither gold nor predicted": (["joy", "fear"], ["fear", "fear"]),
    "every prediction missing": (["joy", "fear", "anger"], [None, STRAY, None]),
    "one item, right": (["awe"], ["awe"]),
    "one item, missing": (["awe"], [None]),
    "all wrong": (["joy", "fear", "anger", "joy"], ["fear", "anger", "joy", "anger"]),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_classification_edge_cases_match_sklearn(case: str) -> None:
    gold, pred = EDGE_CASES[case]
    labels, recs = label_set(5), records(gold, pred)
    assert_matches_sklearn(compute_metrics(recs, labels), recs, labels)


def test_missing_predictions_are_not_a_class_in_macro_f1() -> None:
    """The documented convention: sklearn's inferred labels would average in a "(none)" class at F1 = 0."""
    labels, recs = label_set(2), records(["joy", "fear", "fear"], ["joy", "fear", None])
    y_true, y_pred = sklearn_targets(recs, labels)
    macro = compute_metrics(recs, labels).macro_f1
    assert macro == pytest.approx(f1_score(y_true, y_pred, labels=["joy", "fear"], average="macro"))
    assert macro > f1_score(y_true, y_pred, average="macro")  # ("(none)", joy, fear) inferred


@settings(max_examples=100, deadline=None)
@given(runs())
def test_sentiment_accuracy_matches_sklearn_on_valences(run: tuple[LabelSet, list[PredictionRecord]]) -> None:
    """Items whose gold valence is positive or negative; a prediction without that valence is wrong."""
    labels, recs = run
    scored = [r for r in recs if labels.valence.get(r.label) in ("positive", "negative")]
    metrics = compute_metrics(recs, labels)
    assert metrics.sentiment_n == len(scored)
    if not scored:
        assert metrics.sentiment_accuracy is None
        return
    y_true = [labels.valence[r.label] for r in scored]
    y_pred = [labels.valence.get(r.prediction or "", "no valence") for r in scored]
    assert metrics.sentiment_accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(runs())
def test_flips_are_the_off_diagonal_of_first_vs_final_correctness(run: tuple[LabelSet, list[PredictionRecord]]) -> None:
    recs = run[1]
    with_first = [r for r in recs if r.first_label is not None]
    first_right = [r.first_label == r.label for r in with_first]
    final_right = [r.prediction == r.label for r in with_first]
    # sklearn refuses an empty input; with no first answer every cell is 0
    table = confusion_matrix(first_right, final_right, labels=[False, True]) if with_first else np.zeros((2, 2))
    flips = count_flips(recs)
    assert flips.wrong_to_right == table[0, 1]
    assert flips.right_to_wrong == table[1, 0]
    assert flips.without_first_label == len(recs) - len(with_first)
    assert flips.unchanged == sum(r.first_label == r.prediction for r in with_first)
    assert flips.unchanged + flips.wrong_to_wrong_changed == table[0, 0] + table[1, 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=50))
@example([2.0, 2.0, 2.0])  # ties
@example([3.5])
def test_latency_summary_matches_scipy_percentiles(seconds: list[float]) -> None:
    """numpy's linear percentile is scipy's `interpolation_method="fraction"` (Hyndman & Fan type 7)."""
    summary = latency_summary("reason", seconds)
    assert summary.n == len(seconds)
    assert summary.mean_s == pytest.approx(stats.tmean(seconds), rel=1e-12, abs=1e-12)
    assert summary.p50_s == pytest.approx(stats.scoreatpercentile(seconds, 50), rel=1e-12, abs=1e-12)
    assert summary.p95_s == pytest.approx(stats.scoreatpercentile(seconds, 95), rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.none() | st.text("aAbB", max_size=2), st.text("aAbB", max_size=2)), min_size=1))
def test_exact_match_accuracy_matches_sklearn(pairs: list[tuple[str | None, str]]) -> None:
    responses, golds = [r for r, _ in pairs], [g for _, g in pairs]
    # "<none>" is outside the alphabet, so a None response matches no gold (not "\0": numpy strips trailing NULs)
    expected = accuracy_score([g.lower() for g in golds], ["<none>" if r is None else r.lower() for r in responses])
    assert exact_match_accuracy(responses, golds) == pytest.approx(expected, abs=1e-12)


# --- compare.py: McNemar against scipy's binomial and permutation tests ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500))
@example(0, 1)
@example(7, 7)  # tie: p = 1
@example(0, 30)
@example(2000, 2150)  # large table, p far from the cap
def test_mcnemar_exact_p_matches_binomtest(b: int, c: int) -> None:
    """McNemar's exact test is the two-sided binomial test of b successes in b + c trials at p = ½."""
    if b + c == 0:  # no discordant pair: no evidence either way (binomtest needs n ≥ 1)
        assert mcnemar_exact_p(b, c) == 1.0
        return
    expected = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("b", "c", "concordant"), [(0, 1, 2), (3, 0, 1), (2, 2, 3), (5, 1, 4), (1, 8, 3), (6, 6, 0)])
def test_mcnemar_exact_p_matches_exact_sign_flip_permutation_test(b: int, c: int, concordant: int) -> None:
    """Swapping A and B on any item (a sign flip of right_B − right_A) is the null; ≤ 2^12 flips: exact."""
    diffs = np.array([-1] * b + [1] * c + [0] * concordant)
    result = stats.permutation_test(
        (diffs,), lambda x, axis: x.sum(axis=axis), permutation_type="samples", vectorized=True
    )
    assert mcnemar_exact_p(b, c) == pytest.approx(result.pvalue, rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_table_matches_sklearn_confusion(pairs: list[tuple[bool, bool]]) -> None:
    right_a, right_b = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    (both, a_only), (b_only, neither) = confusion_matrix(right_a, right_b, labels=[True, False])
    table = mcnemar_table(right_a, right_b)
    assert (table.both_right, table.a_only_right, table.b_only_right, table.both_wrong) == (
        both,
        a_only,
        b_only,
        neither,
    )
    assert table.p_value == mcnemar_exact_p(int(a_only), int(b_only))


# --- compare.py: the paired bootstrap against sklearn per resample and scipy.stats.bootstrap --------------------


def sklearn_scores(gold: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    """Accuracy and macro-F1 over the in-set labels present (index k is "(none)", never a class)."""
    active = sorted(set(gold.tolist()) | (set(pred.tolist()) - {k}))
    return accuracy_score(gold, pred), f1_score(gold, pred, labels=active, average="macro", zero_division=0.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k)), min_size=1, max_size=30),
    st.integers(0, 2**32 - 1),
)))  # fmt: skip
def test_resample_scores_match_sklearn_on_each_resample(case: tuple[int, list[tuple[int, int]], int]) -> None:
    k, pairs, seed = case
    gold, pred = np.array([g for g, _ in pairs]), np.array([p for _, p in pairs])
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(8, len(gold)))
    accuracy, macro = resample_scores(gold[idx], pred[idx], k)
    expected = [sklearn_scores(gold[row], pred[row], k) for row in idx]
    assert accuracy.tolist() == pytest.approx([a for a, _ in expected], abs=1e-12)
    assert macro.tolist() == pytest.approx([f for _, f in expected], abs=1e-12)


def paired_case(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold with uneven class sizes; A right ~60%, B agreeing with A ~70% of the time (so pairing matters);
    wrong answers are any label or "(none)"."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(k, size=n, p=rng.dirichlet(np.ones(k)))
    pred_a = np.where(rng.random(n) < 0.6, gold, rng.integers(0, k + 1, n))
    pred_b = np.where(rng.random(n) < 0.7, pred_a, np.where(rng.random(n) < 0.7, gold, rng.integers(0, k + 1, n)))
    return gold, pred_a, pred_b


def delta_statistic(k: int, metric: int) -> Callable[..., np.ndarray]:
    """B − A of resample_scores()[metric] (0 accuracy, 1 macro-F1), vectorized the way scipy calls it."""

    def statistic(gold: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = [x.reshape(-1, x.shape[-1]).astype(np.int64) for x in (gold, pred_a, pred_b)]
        delta = resample_scores(rows[0], rows[2], k)[metric] - resample_scores(rows[0], rows[1], k)[metric]
        return delta.reshape(gold.shape[:-1])

    return statistic


SCIPY_RESAMPLES = 20_000
# Our endpoint is a 2000-resample quantile: the level of scipy's bootstrap distribution it sits at has a Monte-Carlo
# SD of √(q(1−q)/2000) ≈ 0.0035 at q = 0.025, plus √(q(1−q)/20000) ≈ 0.0011 for scipy's own ECDF, ≈ 0.0037 together.
# 0.02 is ≈ 5 SD: it never trips on sampling noise, yet catches a wrong tail (q = 0.05 for a 95% CI), an unpaired
# resample or a shifted statistic. ECDF levels, not raw endpoints, so discrete statistics (tiny n, ties) need no
# grid-size allowance: at an atom the ECDF jumps across q, which the two one-sided checks accept.
LEVEL_TOLERANCE = 0.02


@pytest.mark.parametrize(("seed", "n", "k"), [(0, 200, 6), (1, 120, 3), (2, 60, 4), (3, 30, 2), (4, 12, 5), (5, 6, 3)])
def test_paired_bootstrap_matches_scipy_percentile_bootstrap(seed: int, n: int, k: int) -> None:
    gold, pred_a, pred_b = paired_case(seed, n, k)
    ours = paired_bootstrap(gold, pred_a, pred_b, k, n_resamples=2000, seed=seed, confidence=0.95)
    for metric, (low, high) in enumerate(ours):
        result = stats.bootstrap(
            (gold, pred_a, pred_b), delta_statistic(k, metric), n_resamples=SCIPY_RESAMPLES, paired=True,
            vectorized=True, method="percentile", confidence_level=0.95, rng=np.random.default_rng(1000 + seed),
        )  # fmt: skip
        dist = result.bootstrap_distribution
        for endpoint, level in ((low, 0.025), (high, 0.975)):
            assert np.mean(dist < endpoint) <= level + LEVEL_TOLERANCE, (metric, endpoint, level)
            assert np.mean(dist <= endpoint) >= level - LEVEL_TOLERANCE, (metric, endpoint, level)


@pytest.mark.parametrize(
    ("gold", "pred_a", "pred_b"),
    [([1], [1], [3]), ([0, 1, 2], [0, 3, 2], [0, 3, 2]), ([0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 1, 0])],
    ids=["one item", "identical runs", "identical runs, errors"],
)
def test_paired_bootstrap_collapses_to_the_point_delta_when_every_resample_agrees(
    gold: list[int], pred_a: list[int], pred_b: list[int]
) -> None:
    """Where scipy reports a degenerate distribution (NaN interval), the interval is the sklearn delta itself."""
    g, a, b, k = np.array(gold), np.array(pred_a), np.array(pred_b), 3
    (acc_low, acc_high), (f1_low, f1_high) = paired_bootstrap(g, a, b, k, n_resamples=500, seed=0, confidence=0.95)
    (acc_a, f1_a), (acc_b, f1_b) = sklearn_scores(g, a, k), sklearn_scores(g, b, k)
    assert acc_low == pytest.approx(acc_b - acc_a) and acc_high == pytest.approx(acc_b - acc_a)
    assert f1_low == pytest.approx(f1_b - f1_a) and f1_high == pytest.approx(f1_b - f1_a)


@settings(max_examples=40, deadline=None)
@given(runs(max_n=25), st.randoms(use_true_random=False))
def test_compare_runs_deltas_and_p_match_sklearn_and_scipy(
    run: tuple[LabelSet, list[PredictionRecord]], random: random_module.Random
) -> None:
    """A and B paired by id (B shuffled, each with an item of its own): deltas and p on the common items only."""
    labels, recs_a = run
    recs_b = [r.model_copy(update={"prediction": random.choice([*labels.labels, None])}) for r in recs_a]
    random.shuffle(recs_b)
    extra = records([labels.labels[0]], [labels.labels[0]])[0]
    comparison = compare_runs([*recs_a, extra.model_copy(update={"id": "only-a"})],
                              [*recs_b, extra.model_copy(update={"id": "only-b"})], labels, n_resamples=50)  # fmt: skip
    assert (comparison.only_in_a, comparison.only_in_b, comparison.n_paired) == (["only-a"], ["only-b"], len(recs_a))
    by_id = {r.id: r for r in recs_b}
    y_true, y_a = sklearn_targets(recs_a, labels)
    _, y_b = sklearn_targets([by_id[r.id] for r in recs_a], labels)
    score_a, score_b = sklearn_headline(y_true, y_a, labels), sklearn_headline(y_true, y_b, labels)
    for name in score_a:
        assert comparison.deltas[name] == pytest.approx(score_b[name] - score_a[name], abs=1e-12)
    b = sum(ya == t != yb for t, ya, yb in zip(y_true, y_a, y_b, strict=True))
    c = sum(yb == t != ya for t, ya, yb in zip(y_true, y_a, y_b, strict=True))
    assert (comparison.mcnemar.a_only_right, comparison.mcnemar.b_only_right) == (b, c)
    expected_p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert comparison.mcnemar.p_value == pytest.approx(expected_p, rel=1e-9)
