"""RER terms as EMO-R3 defines them, graph-level terms, and per-role credit (the reflector's calibration)."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from image_factory import png_bytes
from PIL import Image
from repo import ROOT

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import SamplingParams
from emo_r3.agents.parsing import parse_set
from emo_r3.agents.perceiver import Perception
from emo_r3.agents.reasoner import Reasoner, Reasoning
from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict, Reflector
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.trajectory import Reflection, Trajectory
from emo_r3.prompts import MIKELS_8
from emo_r3.training.config import AlgorithmConfig
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


def reasoning(label: str, format_ok: bool = True, boxed: str | None = "", fallback: bool = False) -> Reasoning:
    """A reasoning answering `label`: boxed as `boxed` (default: the label itself), or, with `fallback`, a label
    the closed-set question picked after a box that holds no label (`boxed`, default none at all)."""
    if fallback:
        return Reasoning(
            feeling="calm", affect="positive, low", valence="positive", arousal="low", boxed=boxed or None,
            label=label, label_source="closed_set", format_ok=False,
        )  # fmt: skip
    return Reasoning(
        feeling="calm", affect="positive, low", valence="positive", arousal="low", boxed=boxed or label,
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


# -- Accuracy reads the reasoner's own boxed answer, never the closed-set fallback ----------------------------------


def with_reasonings(t: Trajectory, *reasonings: Reasoning) -> Trajectory:
    """`t` with these reasonings, its verdicts judging their labels (the graph's labels, fallback included)."""
    reflections = [
        r.model_copy(update={"coherence": r.coherence.model_copy(update={"answered_label": reasonings[i].label})})
        for i, r in enumerate(t.reflections)
    ]
    return t.model_copy(update={"reasonings": list(reasonings), "reflections": reflections})


@pytest.mark.parametrize("label_match", ["normalized", "exact"])
def test_accuracy_pays_nothing_for_the_fallback_label(label_match: str) -> None:
    """No usable box: the graph's closed-set fallback answered the gold label, the reward's accuracy is still 0."""
    w = RERWeights(label_match=label_match)
    for boxed in (None, "a feeling of wonder"):  # no box at all; a box that holds no label
        t = with_reasonings(rounds(("awe", "awe", "yes", True, True)), reasoning("awe", boxed=boxed, fallback=True))
        assert t.reasonings[-1].label == "awe"  # the graph's answer is right...
        r = rer(t, "awe", w)
        assert r["accuracy"] == 0.0  # ...but the policy did not box it
        assert r.total == pytest.approx(0.1 * 1.0 + 0.1 * 1.0 + 0.1 * 0.0)  # coherence, consistency, format


def test_graph_terms_read_own_answers() -> None:
    """A fallback first answer that happens to be right is not "right → wrong": no harm; nor is it a gain base."""
    w = GraphTermWeights(gain=0.3, harm=0.4, round_cost=0.0)
    spec = (("awe", None, None, False, False), ("fear", None, None, True, True))
    broken = with_reasonings(rounds(*spec), reasoning("awe", fallback=True), reasoning("fear"))
    assert graph_terms(broken, "awe", w).total == 0.0
    fixed = with_reasonings(rounds(*spec), reasoning("awe", fallback=True), reasoning("awe"))
    assert graph_terms(fixed, "awe", w).terms["correction_gain"] == pytest.approx(0.3)  # no box → boxed right


def test_own_answer_coherence_target_is_the_box_not_the_fallback() -> None:
    t = with_reasonings(rounds(("awe", "awe", "yes", True, True)), reasoning("awe", fallback=True))
    assert rer(t, "fear", RERWeights(coherence_target="own_answer"))["coherence"] == 0.0


@pytest.mark.parametrize(
    ("boxed", "label", "normalized", "exact"),
    [("sadness", "sadness", 1.0, 1.0), (" Sadness ", "sadness", 1.0, 1.0), ("grief", "sadness", 1.0, 0.0),
     ("sad.", "sadness", 1.0, 0.0), ("fear", "fear", 0.0, 0.0)],
)  # fmt: skip
def test_label_match_normalized_or_exact(boxed: str, label: str, normalized: float, exact: float) -> None:
    t = with_reasonings(rounds((label, label, "yes", True, True)), reasoning(label, boxed=boxed))
    assert rer(t, "sadness")["accuracy"] == normalized  # the default
    assert rer(t, "sadness", RERWeights(label_match="normalized"))["accuracy"] == normalized
    assert rer(t, "sadness", RERWeights(label_match="exact"))["accuracy"] == exact


def test_paper_config_matches_labels_exactly() -> None:
    config = yaml.safe_load((ROOT / "configs/train-paper-qwen2.5-vl-3b.yaml").read_text())
    assert AlgorithmConfig.model_validate(config["algorithm"]).rer.label_match == "exact"
    assert RERWeights().label_match == "normalized"


_LABELS = list(MIKELS_8.labels)
_ROUND = st.tuples(
    st.sampled_from(_LABELS),  # the graph's label
    st.sampled_from([None, "a feeling of wonder", "not sure", "?"]),  # a fallback round's box: no label in it
    st.booleans(),  # did the label come from the closed-set fallback?
)


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(_ROUND, min_size=1, max_size=3),
    other_fallbacks=st.lists(st.sampled_from(_LABELS), min_size=3, max_size=3),
    gold=st.sampled_from(_LABELS),
    label_match=st.sampled_from(["normalized", "exact"]),
    coherence_target=st.sampled_from(["ground_truth", "own_answer"]),
)
def test_no_fallback_label_moves_the_policys_reward(spec, other_fallbacks, gold, label_match, coherence_target) -> None:
    """For any trajectory: replacing every closed-set fallback label by any other label changes no term of the
    reward perceiver and reasoner are trained on (accuracy, coherence, consistency, format, gain, harm, cost)."""
    w = RERWeights(label_match=label_match, coherence_target=coherence_target)

    def trajectory(labels: list[str]) -> Trajectory:
        base = rounds(*[(label, "awe", "yes", False, True) for label in labels])
        made = [
            reasoning(label, boxed=boxed, fallback=True) if fallback else reasoning(label)
            for label, (_, boxed, fallback) in zip(labels, spec, strict=True)
        ]
        return with_reasonings(base, *made)

    labels = [label for label, _, _ in spec]
    swapped = [other if fallback else label for (label, _, fallback), other in zip(spec, other_fallbacks, strict=False)]
    before, after = trajectory(labels), trajectory(swapped)
    for role in ("perceiver", "reasoner"):
        assert role_rewards(after, gold, w)[role] == role_rewards(before, gold, w)[role]
    if all(fallback for _, _, fallback in spec):
        assert rer(before, gold, w)["accuracy"] == 0.0


@settings(max_examples=300, deadline=None)
@given(
    box=st.one_of(
        st.sampled_from([*_LABELS, "Awe", " fear ", "grief", "sad", "awe!", "", "none"]), st.text(max_size=12)
    ),
    gold=st.sampled_from(_LABELS),
)
def test_exact_accuracy_is_the_paper_parity_metric(box: str, gold: str) -> None:
    """With label_match exact, the reward's accuracy is `emo-r3 eval --paper-parity`'s score of the same answer: the
    lower-cased, stripped boxed text equals the gold label; the reasoner's fallback never counts."""
    answer = f"<step2>Calm.</step2><step3>positive, low</step3> \\boxed{{{box}}}"

    def respond(messages, sampling, choices):
        return gold if choices else answer  # a fallback question, if asked, picks the gold label

    made, _ = asyncio.run(
        Reasoner(ScriptedChatModel(respond), SamplingParams()).reason(
            (), context=None, perception="A scene.", label_set=MIKELS_8, feedback=None, previous_label=None, round=0
        )
    )
    parsed = parse_set(answer, MIKELS_8, required_steps=(2, 3))
    parity = parsed.boxed.strip().lower() if parsed.boxed else None  # evals/runner.py's paper-parity prediction
    t = with_reasonings(rounds((made.label, made.label, "yes", True, True)), made)
    assert rer(t, gold, RERWeights(label_match="exact"))["accuracy"] == float(parity == gold)


# -- Coherence: the judge's raw answer tells "no evidence" from a wrong answer -----------------------------------


@pytest.mark.parametrize(
    ("implied", "answer", "score"),
    [("awe", "awe", 1.0), ("awe", " Awe. ", 1.0),  # names the target
     (None, "", 0.5), (None, "none", 0.5), (None, " None. ", 0.5), (None, "  ", 0.5),  # no answer: no evidence
     ("fear", "fear", 0.0), (None, "I think it is wonder", 0.0), (None, "joy", 0.0)],  # anything else: wrong
)  # fmt: skip
def test_coherence_score_paper_cases(implied: str | None, answer: str, score: float) -> None:
    assert coherence_score(implied, "awe", answer) == score


def test_coherence_verdicts_recorded_before_the_raw_answer_read_as_no_evidence() -> None:
    old = CoherenceVerdict.model_validate({"implied_label": None, "answered_label": "awe", "passed": False})
    assert old.answer == ""
    t = rounds(("awe", None, "yes", False, True))
    t = t.model_copy(update={"reflections": [t.reflections[0].model_copy(update={"coherence": old})]})
    assert rer(t, "awe")["coherence"] == 0.5


@pytest.mark.parametrize(("said", "score"), [("awe", 1.0), ("", 0.5), ("none", 0.5), ("Probably wonder.", 0.0)])
def test_reflector_keeps_the_judges_answer_for_the_reward(said: str, score: float) -> None:
    """A backend that ignores `choices` (the scripted one does) can answer outside the set: the verdict keeps the
    raw answer, and the RER scores it as the paper's code does."""
    reflector = Reflector(ScriptedChatModel(lambda messages, sampling, choices: said), SamplingParams())
    verdict, call = asyncio.run(
        reflector.check_coherence(
            perception="A peak.", feeling="Small.", answered_label="awe", label_set=MIKELS_8, round=0
        )
    )
    assert verdict.answer == said and call.parsed["answer"] == said
    t = rounds(("awe", None, "yes", False, True))
    t = t.model_copy(update={"reflections": [t.reflections[0].model_copy(update={"coherence": verdict})]})
    assert rer(t, "awe")["coherence"] == score


@pytest.mark.parametrize("label_match", ["normalized", "exact"])
def test_a_graph_run_without_a_box_earns_no_accuracy(label_match: str) -> None:
    """The real graph: the reasoner skips the box, the closed-set fallback answers the gold label (the graph's
    result is right, label_source closed_set); the training reward pays no accuracy for it."""

    def respond(messages, sampling, choices):
        if choices == ["yes", "no"]:
            return "yes"
        if choices:
            return "awe"  # the fallback question and the coherence check both pick awe
        if "<step2>" in messages[-1].text:
            return "<step2>Small under the sky.</step2><step3>positive, high</step3> I would say awe."
        return "<step1>A mountain at dawn.</step1>"

    model = ScriptedChatModel(respond)
    graph = EmotionGraph.from_config(
        GraphConfig(max_rounds=0), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
    )
    image = png_bytes(Image.new("RGB", (16, 12), (90, 120, 200)))
    result = asyncio.run(graph.arun(EmotionQuery(images=[image])))
    assert (result.label, result.label_source) == ("awe", "closed_set")
    r = rer(result.trajectory, "awe", RERWeights(label_match=label_match))
    assert r["accuracy"] == 0.0 and r["coherence"] == 1.0 and r["consistency"] == 1.0
