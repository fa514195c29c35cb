"""RER terms as EMO-R3 defines them, graph-level terms, and per-role credit (the reflector's calibration)."""

from __future__ import annotations

import pytest

from emo_r3.agents.perceiver import Perception
from emo_r3.agents.reasoner import Reasoning
from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict
from emo_r3.graphs.trajectory import Reflection, Trajectory
from emo_r3.training.rewards import (
    GraphTermWeights,
    RERWeights,
    coherence_score,
    consistency_score,
    graph_terms,
    reflector_reward,
    rer,
    role_rewards,
    trajectory_reward,
    verdict_correctness,
)


def reasoning(label: str, format_ok: bool = True) -> Reasoning:
    return Reasoning(
        feeling="calm", affect="positive, low", valence="positive", arousal="low", boxed=label,
        label=label, label_source="boxed", format_ok=format_ok,
    )  # fmt: skip


def rounds(*spec: tuple[str, str | None, str | None, bool, bool], format_ok: bool = True) -> Trajectory:
    """One round per (label, implied, answer, coherence passed, consistency passed); the last round accepts."""
    reflections = [
        Reflection(
            round=i,
            coherence=CoherenceVerdict(implied_label=implied, answered_label=label, passed=coh_ok),
            consistency=ConsistencyVerdict(answer=answer, passed=con_ok),
            decision="accept" if i == len(spec) - 1 else "revise_reasoning",
        )
        for i, (label, implied, answer, coh_ok, con_ok) in enumerate(spec)
    ]
    return Trajectory(
        query_id="q",
        label_set="mikels8",
        perceptions=[Perception(text="a mountain at dawn", format_ok=True)],
        reasonings=[reasoning(s[0], format_ok) for s in spec],
        reflections=reflections,
        termination="accepted",
    )


def test_coherence_score() -> None:
    assert coherence_score("awe", "awe") == 1.0
    assert coherence_score(" Awe ", "awe") == 1.0
    assert coherence_score("fear", "awe") == 0.0
    assert coherence_score(None, "awe") == 0.5
    assert coherence_score("", "awe") == 0.5
    assert coherence_score("none", "awe") == 0.5


@pytest.mark.parametrize(
    ("answer", "score"),
    [("yes", 1.0), ("Yes", 1.0), ("no", 0.0), (" NO ", 0.0), (None, 0.5), ("not", 0.5), ("none", 0.5),
     ("unknown", 0.5), ("yes, no", 0.5)],
)  # fmt: skip
def test_consistency_score_exact_answers_only(answer: str | None, score: float) -> None:
    assert consistency_score(answer) == score


def test_rer_reference_weights_all_right() -> None:
    r = rer(rounds(("awe", "awe", "yes", True, True)), "awe")
    assert r.terms == {"accuracy": 1.0, "coherence": 1.0, "consistency": 1.0, "format": 1.0}
    assert r.total == pytest.approx(1.1)


def test_rer_hand_computed_mixture() -> None:
    # right label, coherence extraction failed (0.5), consistency "no" (0), bad format: 0.8 + 0.05 + 0 + 0.
    r = rer(rounds(("awe", None, "no", False, False), format_ok=False), "Awe")
    assert r["accuracy"] == 1.0 and r["coherence"] == 0.5 and r["consistency"] == 0.0 and r["format"] == 0.0
    assert r.total == pytest.approx(0.85)


def test_rer_wrong_label() -> None:
    r = rer(rounds(("fear", "fear", "yes", True, True)), "awe")
    assert r["accuracy"] == 0.0 and r["coherence"] == 0.0
    assert r.total == pytest.approx(0.2)  # consistency + format


def test_coherence_target_own_answer() -> None:
    t = rounds(("fear", "fear", "yes", True, True))
    assert rer(t, "awe", RERWeights(coherence_target="own_answer"))["coherence"] == 1.0
    assert rer(t, "awe")["coherence"] == 0.0


def test_multiplicative_variant() -> None:
    w = RERWeights(multiplicative=True)
    assert rer(rounds(("awe", "awe", "yes", True, True)), "awe", w).total == pytest.approx(1.0)
    assert rer(rounds(("awe", None, None, True, True)), "awe", w).total == pytest.approx(0.9 * 0.25 + 0.1)
    assert rer(rounds(("awe", "awe", "no", True, False)), "awe", w).total == pytest.approx(0.1)


def test_rer_reads_first_round_reflection_and_final_label() -> None:
    # Round 0 answered fear (coherence implies awe, consistency yes); round 1 answers awe, its checks fail.
    t = rounds(("fear", "awe", "yes", False, True), ("awe", "fear", "no", False, False))
    r = rer(t, "awe")
    assert r.terms == {"accuracy": 1.0, "coherence": 1.0, "consistency": 1.0, "format": 1.0}


def test_rer_error_trajectory_scores_zero() -> None:
    t = Trajectory(query_id="q", label_set="mikels8", termination="error", error="boom")
    assert rer(t, "awe").total == 0.0
    assert trajectory_reward(t, "awe").total == 0.0


def test_graph_terms() -> None:
    w = GraphTermWeights(gain=0.3, harm=0.4, round_cost=0.05)
    fixed = rounds(("fear", None, None, False, False), ("awe", None, None, True, True))
    assert graph_terms(fixed, "awe", w).terms == pytest.approx(
        {"correction_gain": 0.3, "correction_harm": 0.0, "round_cost": -0.05}
    )
    broken = rounds(("awe", None, None, False, False), ("fear", None, None, True, True))
    assert graph_terms(broken, "awe", w).total == pytest.approx(-0.45)
    assert graph_terms(rounds(("awe", None, None, True, True)), "awe", w).total == 0.0


def test_trajectory_reward_adds_graph_terms() -> None:
    t = rounds(("fear", "fear", "yes", False, True), ("awe", "awe", "yes", True, True))
    total = trajectory_reward(t, "awe", graph_weights=GraphTermWeights(gain=0.1, harm=0.1, round_cost=0.1)).total
    # RER: acc 1, coh (round 0 implied fear vs gold awe) 0, con 1, fmt 1 → 1.0; graph: +0.1 − 0.1.
    assert total == pytest.approx(1.0)


def test_role_rewards_share_and_reflector_credit() -> None:
    # Round 0: fear (wrong), coherence fails it (right), consistency passes it (wrong).
    # Round 1: awe (right), both pass (right, right). Reflector: 3/4.
    t = rounds(("fear", "fear", "yes", False, True), ("awe", "awe", "yes", True, True))
    roles = role_rewards(t, "awe")
    assert set(roles) == {"perceiver", "reasoner", "reflector"}
    assert roles["perceiver"] == roles["reasoner"] == trajectory_reward(t, "awe")
    assert verdict_correctness(t, "awe") == [1.0, 0.0, 1.0, 1.0]
    assert roles["reflector"].total == pytest.approx(0.75)


def test_reflector_without_verdicts_gets_zero() -> None:
    t = rounds(("awe", None, None, True, True))
    t = t.model_copy(update={"reflections": [Reflection(round=0, coherence=None, consistency=None, decision="stop")]})
    assert reflector_reward(t, "awe").total == 0.0


def test_always_yes_reflector_gains_nothing_over_a_calibrated_one() -> None:
    labels = ["awe", "fear", "awe", "sadness", "awe", "anger"]  # gold is awe: three right, three wrong
    gold = "awe"

    def mean_reward(calibrated: bool) -> float:
        total = 0.0
        for label in labels:
            passed = (label == gold) if calibrated else True
            total += reflector_reward(rounds((label, label, "yes", passed, passed)), gold).total
        return total / len(labels)

    always_yes, calibrated = mean_reward(False), mean_reward(True)
    assert always_yes == pytest.approx(0.5)
    assert calibrated == pytest.approx(1.0)
    assert calibrated > always_yes
