"""Evaluation metrics against numbers worked out by hand, and the paired comparison's statistics."""

from __future__ import annotations

import math
import warnings

import pytest

from emo_r3.evals.compare import compare_runs, mcnemar_exact_p, pair_records, verdict
from emo_r3.evals.metrics import NONE_COLUMN, compute_metrics, exact_match_accuracy, flip_kind
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.prompts.label_sets import MIKELS_8, LabelSet

# joy positive, fear negative, surprise neutral: the neutral class is left out of binary sentiment.
TINY = LabelSet(
    name="tiny", labels=("joy", "fear", "surprise"),
    valence={"joy": "positive", "fear": "negative", "surprise": "neutral"},
)  # fmt: skip

T, F = True, False


def record(
    id: str, label: str, prediction: str | None, first: str | None = None, *, status: str = "ok", **extra
) -> PredictionRecord:
    return PredictionRecord(
        id=id, status=status, label=label, label_set="tiny", prediction=prediction, first_label=first, **extra
    )


def hand_case() -> list[PredictionRecord]:
    """Ten items. Columns: id, gold, final, first, format_ok, accepted, coherence, consistency, rounds."""
    rows = [
        ("1", "joy", "joy", "joy", T, T, [T], [T], 0),
        ("2", "joy", "joy", "fear", T, T, [F, T], [T, T], 1),  # wrong → right
        ("3", "joy", "surprise", "surprise", T, T, [T], [T], 0),  # neutral prediction: wrong in sentiment too
        ("4", "joy", None, None, F, F, [], [], 0),  # the error
        ("5", "fear", "fear", "fear", T, T, [T], [T], 0),
        ("6", "fear", "fear", "fear", T, T, [T, T], [F, T], 1),  # corrected, same label: unchanged
        ("7", "fear", "joy", "fear", T, F, [F, F], [T, T], 1),  # right → wrong
        ("8", "surprise", "surprise", "surprise", T, T, [T], [T], 0),
        ("9", "surprise", "joy", "fear", F, F, [F, F], [T, F], 1),  # wrong → wrong, changed
        ("10", "surprise", "fear", None, F, F, [], [], 0),  # no first answer recorded
    ]
    latency = {"1": {"perceive": 1.0, "reason": 0.5}, "2": {"perceive": 2.0, "reason": 1.5}, "3": {"perceive": 3.0},
               "4": {"perceive": 4.0}}  # fmt: skip
    return [hand_record(*row, latency.get(row[0], {})) for row in rows]


def hand_record(id, gold, final, first, fmt, acc, coh, con, rounds, latency) -> PredictionRecord:
    failed = id == "4"
    return record(
        id, gold, final, first, status="error" if failed else "ok", format_ok=fmt, accepted=acc,
        coherence_passed=coh, consistency_passed=con, rounds=rounds, node_latency_s=latency,
        prompt_tokens=0 if failed else 100, completion_tokens=0 if failed else 20,
        error="backend unreachable" if failed else None,
    )  # fmt: skip


def test_classification_metrics_match_the_hand_computation():
    m = compute_metrics(hand_case(), TINY)
    # correct: items 1, 2, 5, 6, 8 → 5/10; the error (item 4) counts as wrong
    assert (m.n, m.n_correct, m.accuracy) == (10, 5, 0.5)
    by_label = {c.label: c for c in m.per_class}
    # joy: gold {1,2,3,4} support 4; predicted {1,2,7,9} = 4; TP {1,2} = 2 → P = R = F1 = 1/2
    assert (by_label["joy"].support, by_label["joy"].predicted) == (4, 4)
    assert by_label["joy"].precision == pytest.approx(0.5)
    assert by_label["joy"].recall == pytest.approx(0.5)
    assert by_label["joy"].f1 == pytest.approx(0.5)
    # fear: gold {5,6,7} support 3; predicted {5,6,10} = 3; TP 2 → P = R = F1 = 2/3
    assert (by_label["fear"].support, by_label["fear"].predicted) == (3, 3)
    assert by_label["fear"].f1 == pytest.approx(2 / 3)
    # surprise: gold {8,9,10} support 3; predicted {3,8} = 2; TP 1 → P 1/2, R 1/3, F1 = 2·(1/6)/(5/6) = 0.4
    assert by_label["surprise"].precision == pytest.approx(0.5)
    assert by_label["surprise"].recall == pytest.approx(1 / 3)
    assert by_label["surprise"].f1 == pytest.approx(0.4)
    # macro = (1/2 + 2/3 + 2/5) / 3 = 47/90; weighted = (4·1/2 + 3·2/3 + 3·2/5) / 10 = 5.2/10
    assert m.macro_f1 == pytest.approx(47 / 90)
    assert m.weighted_f1 == pytest.approx(0.52)


def test_confusion_matrix_has_a_none_column_for_missing_predictions():
    m = compute_metrics(hand_case(), TINY)
    assert m.columns == ["joy", "fear", "surprise", NONE_COLUMN]
    assert m.confusion == [
        [2, 0, 1, 1],  # joy: 1, 2 right; 3 → surprise; 4 → (none)
        [1, 2, 0, 0],  # fear: 5, 6 right; 7 → joy
        [1, 1, 1, 0],  # surprise: 8 right; 9 → joy; 10 → fear
    ]


def test_binary_sentiment_leaves_out_neutral_gold_and_counts_none_wrong():
    m = compute_metrics(hand_case(), TINY)
    # items 8-10 (gold surprise, neutral) are left out; of 1-7: 1, 2, 5, 6 right; 3 (neutral), 4 (None), 7 wrong
    assert (m.sentiment_accuracy, m.sentiment_n) == (pytest.approx(4 / 7), 7)


def test_sentiment_is_none_for_a_label_set_without_valence():
    plain = LabelSet(name="plain", labels=("calm", "tense"))
    m = compute_metrics([record("1", "calm", "calm"), record("2", "tense", "calm")], plain)
    assert (m.sentiment_accuracy, m.sentiment_n) == (None, 0)


def test_sentiment_on_mikels_uses_the_reference_valence():
    records = [record("1", "awe", "amusement"), record("2", "fear", "sadness"), record("3", "anger", "awe")]
    # awe→amusement both positive ✓; fear→sadness both negative ✓; anger→awe ✗ → 2/3
    assert compute_metrics(records, MIKELS_8).sentiment_accuracy == pytest.approx(2 / 3)


def test_format_errors_tokens_and_latency():
    m = compute_metrics(hand_case(), TINY)
    assert m.format_rate == pytest.approx(0.7)  # items 1-3 and 5-8
    assert (m.n_errors, m.status_counts) == (1, {"error": 1, "ok": 9})
    # nine items with 100/20 tokens and the error with 0 → means 90 and 18
    assert (m.tokens.prompt_mean, m.tokens.completion_mean) == (90.0, 18.0)
    assert (m.tokens.prompt_total, m.tokens.completion_total) == (900, 180)
    lat = {n.node: n for n in m.latency}
    assert list(lat) == ["perceive", "reason", "total"]
    # perceive [1, 2, 3, 4]: mean 2.5, median 2.5, p95 = 3 + 0.85·(4 − 3) = 3.85 (linear interpolation)
    assert (lat["perceive"].n, lat["perceive"].mean_s, lat["perceive"].p50_s) == (4, 2.5, 2.5)
    assert lat["perceive"].p95_s == pytest.approx(3.85)
    # reason [0.5, 1.5]: mean 1.0, p95 = 0.5 + 0.95·1.0 = 1.45
    assert (lat["reason"].n, lat["reason"].mean_s) == (2, 1.0)
    assert lat["reason"].p95_s == pytest.approx(1.45)
    # total per timed item: [1.5, 3.5, 3, 4] → mean 3.0
    assert (lat["total"].n, lat["total"].mean_s) == (4, 3.0)


def test_reflection_statistics_and_flips():
    r = compute_metrics(hand_case(), TINY).reflection
    assert r.accept_rate == pytest.approx(0.6)  # 1, 2, 3, 5, 6, 8
    # coherence checks: 1+2+1+1+2+2+1+2 = 12, passed 1+1+1+1+2+0+1+0 = 7; first rounds: 5 of 8 passed
    assert (r.coherence_checks, r.coherence_pass_rate, r.coherence_first_pass_rate) == (12, 7 / 12, 5 / 8)
    # consistency: 12 checks, passed 1+2+1+1+1+2+1+1 = 10; first rounds: only item 6 failed → 7/8
    assert (r.consistency_checks, r.consistency_pass_rate, r.consistency_first_pass_rate) == (12, 10 / 12, 7 / 8)
    assert (r.corrections, r.corrected_items, r.correction_rate) == (4, 4, 0.4)  # items 2, 6, 7, 9
    f = r.flips
    assert (f.wrong_to_right, f.right_to_wrong, f.wrong_to_wrong_changed, f.unchanged) == (1, 1, 1, 5)
    assert f.without_first_label == 2  # items 4 and 10


@pytest.mark.parametrize(
    ("first", "final", "kind"),
    [("fear", "joy", "wrong_to_right"), ("joy", "fear", "right_to_wrong"), ("joy", None, "right_to_wrong"),
     ("fear", "surprise", "wrong_to_wrong_changed"), ("fear", None, "wrong_to_wrong_changed"),
     ("joy", "joy", "unchanged"), ("fear", "fear", "unchanged"), (None, "joy", "without_first_label")],
)  # fmt: skip
def test_flip_kinds(first, final, kind):
    assert flip_kind(first, final, gold="joy") == kind


def test_zero_support_and_never_predicted_classes_score_zero_without_warnings():
    four = LabelSet(name="four", labels=("a", "b", "c", "d"))
    records = [record("1", "a", "a"), record("2", "a", "c"), record("3", "b", "b"), record("4", "b", "b")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(records, four)
    by_label = {c.label: c for c in m.per_class}
    assert (by_label["c"].support, by_label["c"].predicted, by_label["c"].f1) == (0, 1, 0.0)  # predicted only
    assert (by_label["d"].support, by_label["d"].predicted) == (0, 0)
    assert (by_label["d"].precision, by_label["d"].recall, by_label["d"].f1) == (0.0, 0.0, 0.0)
    # a: P 1, R 1/2, F1 2/3; b: F1 1; c: F1 0 (a false positive counts); d: neither gold nor predicted, left out
    assert m.macro_f1 == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m.weighted_f1 == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)


def test_a_run_of_only_errors_scores_zero():
    records = [record(str(i), "joy", None, status="error", error="timeout") for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(records, TINY)
    assert (m.accuracy, m.macro_f1, m.weighted_f1, m.n_errors) == (0.0, 0.0, 0.0, 3)
    assert m.confusion[0] == [0, 0, 0, 3]
    assert m.sentiment_accuracy == 0.0
    assert m.latency == []
    assert m.reflection.coherence_pass_rate is None


def test_predictions_outside_the_label_set_land_in_none():
    m = compute_metrics([record("1", "joy", "purple"), record("2", "joy", "joy")], TINY)
    assert m.confusion[0] == [1, 0, 0, 1]
    assert m.accuracy == 0.5


def test_gold_labels_outside_the_label_set_are_refused():
    with pytest.raises(ValueError, match="outside label set 'tiny'"):
        compute_metrics([record("x", "awe", "awe")], TINY)


def test_an_empty_run_is_refused():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], TINY)


def test_exact_match_is_lower_cased_and_nothing_else():
    responses = ["Awe", "awe ", None, "sad", "FEAR"]
    golds = ["awe", "awe", "fear", "sadness", "fear"]
    # "Awe" and "FEAR" match after lower-casing; a trailing space, None and a synonym do not → 2/5
    assert exact_match_accuracy(responses, golds) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        exact_match_accuracy(["awe"], ["awe", "fear"])


# ---------------------------------------------------------------- comparison


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (10, 2, 158 / 4096),  # n=12: 2·(C(12,0)+C(12,1)+C(12,2))/2^12 = 2·(1+12+66)/4096 = 0.0386
        (2, 10, 158 / 4096),  # symmetric
        (5, 0, 2 / 32),  # 2·1/2^5 = 0.0625
        (3, 3, 1.0),  # 2·(1+6+15+20)/64 = 84/64, capped at 1
        (0, 0, 1.0),  # no discordant pair
    ],
)
def test_mcnemar_exact_p_on_known_tables(b, c, p):
    assert mcnemar_exact_p(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_p_stays_finite_for_large_tables():
    p = mcnemar_exact_p(1200, 1000)
    assert 0 < p < 1e-4
    assert math.isfinite(p)


def labelled_runs(n: int = 60) -> tuple[list[PredictionRecord], list[PredictionRecord]]:
    """A right on 30 of 60; B right on those 30 plus 12 more, and wrong on 2 that A got right."""
    golds = [TINY.labels[i % 3] for i in range(n)]
    other = {"joy": "fear", "fear": "surprise", "surprise": "joy"}
    a = [record(str(i), g, g if i < 30 else other[g], format_ok=True) for i, g in enumerate(golds)]
    b_right = (set(range(30)) - {0, 1}) | set(range(30, 42))
    b = [record(str(i), g, g if i in b_right else other[g], format_ok=True) for i, g in enumerate(golds)]
    return a, b


def test_compare_pairs_items_and_reports_the_unpaired():
    a, b = labelled_runs()
    c = compare_runs([*a, record("only-a", "joy", "joy")], [record("only-b", "fear", "fear"), *b], TINY)
    assert c.n_paired == 60
    assert (c.only_in_a, c.only_in_b) == (["only-a"], ["only-b"])
    # A right 30/60, B right 40/60 → +1/6 accuracy
    assert c.deltas["accuracy"] == pytest.approx(1 / 6)
    assert c.deltas["format_rate"] == 0.0
    m = c.mcnemar
    assert (m.both_right, m.a_only_right, m.b_only_right, m.both_wrong) == (28, 2, 12, 18)
    assert m.p_value == pytest.approx(mcnemar_exact_p(2, 12))
    assert c.verdict == f"B is better than A on accuracy: +16.7 pts, p={m.p_value:.3f}"
    assert c.accuracy_ci.low < c.accuracy_ci.delta < c.accuracy_ci.high
    assert c.accuracy_ci.low > 0


def test_compare_recall_deltas_per_class():
    a, b = labelled_runs()
    c = compare_runs(a, b, TINY)
    deltas = {d.label: d for d in c.recall_deltas}
    # joy items are i ≡ 0 (mod 3): 20 of them; A right on i < 30 → 10; B right on 3..27 and 30..39 → 9 + 4 = 13
    assert deltas["joy"].support == 20
    assert (deltas["joy"].recall_a, deltas["joy"].recall_b) == (0.5, pytest.approx(13 / 20))
    assert deltas["joy"].delta == pytest.approx(3 / 20)


def test_bootstrap_is_deterministic_given_the_seed():
    a, b = labelled_runs()
    first, again = compare_runs(a, b, TINY, seed=7), compare_runs(a, b, TINY, seed=7)
    assert first.model_dump() == again.model_dump()
    other = compare_runs(a, b, TINY, seed=8)
    assert (other.accuracy_ci.low, other.accuracy_ci.high) != (first.accuracy_ci.low, first.accuracy_ci.high) or (
        other.macro_f1_ci.low, other.macro_f1_ci.high) != (first.macro_f1_ci.low, first.macro_f1_ci.high)  # fmt: skip


def test_identical_runs_differ_by_nothing():
    a, _ = labelled_runs()
    c = compare_runs(a, a, TINY, n_resamples=500)
    assert all(delta == 0 for delta in c.deltas.values())
    for ci in (c.accuracy_ci, c.macro_f1_ci):
        assert ci.low <= 0 <= ci.high
        assert ci.delta == 0
    assert c.mcnemar.p_value == 1.0
    assert c.verdict.startswith("no significant difference")


def test_worse_runs_are_called_worse():
    a, b = labelled_runs()
    assert compare_runs(b, a, TINY, name_a="new", name_b="old").verdict.startswith("old is worse than new")
    assert verdict(-0.041, 0.003, 0.05, "A", "B") == "B is worse than A on accuracy: -4.1 pts, p=0.003"
    assert verdict(0.041, 0.0004, 0.05, "A", "B") == "B is better than A on accuracy: +4.1 pts, p<0.001"


def test_pairing_refuses_repeated_ids_and_mismatched_gold():
    with pytest.raises(ValueError, match="more than once"):
        pair_records([record("1", "joy", "joy"), record("1", "joy", "joy")], [])
    with pytest.raises(ValueError, match="gold labels differ"):
        pair_records([record("1", "joy", "joy")], [record("1", "fear", "joy")])
    with pytest.raises(ValueError, match="no item id in common"):
        compare_runs([record("1", "joy", "joy")], [record("2", "joy", "joy")], TINY)


def test_comparison_rows_for_the_cli():
    a, b = labelled_runs()
    rows = compare_runs(a, b, TINY).rows()
    assert rows[0][:3] == ("accuracy", "50.0%", "66.7%")
    assert rows[0][3].startswith("+16.7 pts (95% CI ")
    assert all(len(row) == 4 for row in rows)
