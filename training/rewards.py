"""EMO-R3's Reflective Emotional Reward (RER), graph-level terms, and per-role credit over graph trajectories.

Pure functions of a `Trajectory` and its gold label; no model calls (the reflector's verdicts are already in it).

Choices:
* The RER's coherence and consistency terms are read from the trajectory's FIRST round's reflection: EMO-R3 scores
  the policy's own answer, before the reflector's feedback loop could change it. Accuracy and format are read from
  the FINAL reasoning, the answer the graph returns.
* Accuracy (and the correction gain/harm, and the `own_answer` coherence target) read the reasoner's OWN answer,
  its \\boxed{} label (`answer_label`): a reasoning without a usable box scores 0, whatever the graph's closed-set
  fallback picked. The fallback is the graph's output, never a reward source: paying it would pay a policy for
  skipping the box. `RERWeights.label_match` says how the box is matched: `normalized` (onto the label set, so
  `\\boxed{grief}` is sadness) or `exact` (the lower-cased, stripped boxed text, as the paper's code).
* A missing verdict (check disabled, or the run ended before it) scores 0.5, like a failed extraction: no evidence.
* A trajectory without any reasoning (run error) scores 0 on every term.

Reference-code bugs fixed here (the EMO-R3 reward function):
* consistency used substring tests (`"no" in answer`), so "not", "none", "unknown" counted as "no"; here only the
  exact answers "yes"/"no" (stripped, lower-cased) count, anything else scores 0.5.
* coherence compared raw strings; here labels are compared stripped and lower-cased on both sides, like accuracy.
"""

from __future__ import annotations

import importlib
import string
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from emo_r3.agents.call_record import Role
from emo_r3.agents.model_specs import ConfigError
from emo_r3.agents.parsing import SETToken, parse_set, set_tokens
from emo_r3.agents.reasoner import Reasoning
from emo_r3.graphs.trajectory import Reflection, Trajectory
from emo_r3.prompts import LabelSet, get_label_set

NO_EVIDENCE = 0.5

LabelMatch = Literal["normalized", "exact"]


class RERWeights(BaseModel, frozen=True):
    """R = 0.8·acc + 0.1·coh + 0.1·con + 0.1·fmt (reference), or 0.9·acc·coh·con + 0.1·fmt when multiplicative."""

    accuracy: float = 0.8
    coherence: float = 0.1
    consistency: float = 0.1
    format: float = 0.1
    coherence_target: Literal["ground_truth", "own_answer"] = "ground_truth"
    # How the reasoner's \boxed{} answer is matched to the gold label: `normalized` = its label-set normalisation
    # (synonyms count: grief -> sadness); `exact` = the lower-cased, stripped boxed text (the paper's code).
    label_match: LabelMatch = "normalized"
    multiplicative: bool = False
    multiplicative_scale: float = 0.9


class GraphTermWeights(BaseModel, frozen=True):
    """R_graph = +gain·[first wrong ∧ final right] − harm·[first right ∧ final wrong] − round_cost·corrections.

    Keep gain ≤ round_cost: otherwise answering wrong on purpose in round 0 and being corrected pays.
    """

    gain: float = Field(0.1, ge=0)
    harm: float = Field(0.1, ge=0)
    round_cost: float = Field(0.1, ge=0)


class RewardBreakdown(BaseModel, frozen=True):
    """Named reward terms (raw scores or weighted graph terms) and the scalar that training uses."""

    model_config = ConfigDict(extra="forbid")

    terms: dict[str, float] = Field(default_factory=dict)
    total: float

    def __getitem__(self, name: str) -> float:
        return self.terms[name]


def _norm(label: str | None) -> str | None:
    return None if label is None else label.strip().lower()


def _is_empty_answer(answer: str) -> bool:
    return answer.strip(string.punctuation + string.whitespace).lower() in ("", "none")


def accuracy_score(label: str | None, gold: str) -> float:
    """acc = 1[lower(strip(label)) == lower(strip(gold))]; 0 for no label.

    The comparison is exact, but `label` is what the caller read: the RER passes `answer_label`, the reasoner's
    boxed answer normalised onto the label set or raw (`label_match`), never the closed-set fallback.
    """
    return float(label is not None and _norm(label) == _norm(gold))


def coherence_score(implied: str | None, target: str | None, answer: str = "") -> float:
    """coh = 1 if implied == target, 0.5 if the judge's answer is empty or "none" (no evidence), else 0.

    `implied` is the judge's answer read as a label of the set (None when it names none); `answer` its raw text.
    As in the paper's code, an answer that is not a label (possible with a backend that ignores `choices`) is
    wrong, not missing evidence. Records from before `answer` was kept pass "" and read as no evidence.
    """
    implied = _norm(implied)
    if implied and implied != "none":
        return float(target is not None and implied == _norm(target))
    return NO_EVIDENCE if _is_empty_answer(answer) else 0.0


def consistency_score(answer: str | None) -> float:
    """con = 1 if answer == "yes", 0 if answer == "no", else 0.5 (exact answers; "not"/"none" are not "no")."""
    answer = _norm(answer)
    return {"yes": 1.0, "no": 0.0}.get(answer or "", NO_EVIDENCE)


def format_score(format_ok: bool) -> float:
    """fmt = 1[response matches the SET format]."""
    return float(format_ok)


def answer_label(reasoning: Reasoning, match: LabelMatch = "normalized") -> str | None:
    """The reasoner's own answer: its boxed label (normalised onto the set, or the raw lower-cased boxed text when
    `exact`); None when it wrote no usable box, i.e. when the graph's label came from the closed-set fallback."""
    if match == "exact":
        return _norm(reasoning.boxed) or None
    return reasoning.label if reasoning.label_source == "boxed" else None


def first_label(trajectory: Trajectory, match: LabelMatch = "normalized") -> str | None:
    """The reasoner's own answer in the first round (`answer_label`)."""
    return answer_label(trajectory.reasonings[0], match) if trajectory.reasonings else None


def final_label(trajectory: Trajectory, match: LabelMatch = "normalized") -> str | None:
    """The reasoner's own answer in the last round (`answer_label`)."""
    return answer_label(trajectory.reasonings[-1], match) if trajectory.reasonings else None


def round_label(trajectory: Trajectory, reflection: Reflection) -> str | None:
    """The label the reflection judged: the coherence verdict's answered label, else that round's reasoning.

    The graph's label, fallback included: the reflector is credited on the label it saw, not on the policy's box.
    """
    if reflection.coherence is not None:
        return reflection.coherence.answered_label
    if 0 <= reflection.round < len(trajectory.reasonings):
        return trajectory.reasonings[reflection.round].label
    return None


def rer(trajectory: Trajectory, gold: str, weights: RERWeights | None = None) -> RewardBreakdown:
    """R = w_acc·acc + w_coh·coh + w_con·con + w_fmt·fmt on the first round's reflection and the final own answer."""
    w = weights or RERWeights()
    if not trajectory.reasonings:
        return RewardBreakdown(terms=dict.fromkeys(("accuracy", "coherence", "consistency", "format"), 0.0), total=0.0)
    first = trajectory.reflections[0] if trajectory.reflections else None
    coh_verdict = first.coherence if first else None
    con_verdict = first.consistency if first else None
    target = gold if w.coherence_target == "ground_truth" else first_label(trajectory, w.label_match)
    coherence = coherence_score(coh_verdict.implied_label, target, coh_verdict.answer) if coh_verdict else NO_EVIDENCE
    terms = {
        "accuracy": accuracy_score(final_label(trajectory, w.label_match), gold),
        "coherence": coherence,
        "consistency": consistency_score(con_verdict.answer) if con_verdict else NO_EVIDENCE,
        "format": format_score(trajectory.reasonings[-1].format_ok),
    }
    if w.multiplicative:
        total = w.multiplicative_scale * terms["accuracy"] * terms["coherence"] * terms["consistency"]
        total += w.format * terms["format"]
    else:
        total = sum(getattr(w, name) * score for name, score in terms.items())
    return RewardBreakdown(terms=terms, total=total)


def graph_terms(
    trajectory: Trajectory,
    gold: str,
    weights: GraphTermWeights | None = None,
    label_match: LabelMatch = "normalized",
) -> RewardBreakdown:
    """R_graph = g·[first ✗ → final ✓] − h·[first ✓ → final ✗] − c·corrections, on the reasoner's own answers."""
    w = weights or GraphTermWeights()
    first_ok = accuracy_score(first_label(trajectory, label_match), gold)
    final_ok = accuracy_score(final_label(trajectory, label_match), gold)
    terms = {
        "correction_gain": w.gain * (1.0 - first_ok) * final_ok,
        "correction_harm": -w.harm * first_ok * (1.0 - final_ok),
        "round_cost": -w.round_cost * trajectory.corrections,
    }
    return RewardBreakdown(terms=terms, total=sum(terms.values()))


def trajectory_reward(
    trajectory: Trajectory,
    gold: str,
    weights: RERWeights | None = None,
    graph_weights: GraphTermWeights | None = None,
) -> RewardBreakdown:
    """R = RER + R_graph."""
    match = (weights or RERWeights()).label_match
    base, graph = rer(trajectory, gold, weights), graph_terms(trajectory, gold, graph_weights, match)
    return RewardBreakdown(terms={**base.terms, **graph.terms}, total=base.total + graph.total)


def verdict_correctness(trajectory: Trajectory, gold: str) -> list[float]:
    """right_k = 1[passed_k == (label_round(k) == gold)] for every coherence/consistency verdict k."""
    scores = []
    for reflection in trajectory.reflections:
        label_ok = bool(accuracy_score(round_label(trajectory, reflection), gold))
        for verdict in (reflection.coherence, reflection.consistency):
            if verdict is not None:
                scores.append(float(verdict.passed == label_ok))
    return scores


def reflector_reward(trajectory: Trajectory, gold: str) -> RewardBreakdown:
    """R_reflector = mean_k right_k (0 when it gave no verdict)."""
    scores = verdict_correctness(trajectory, gold)
    mean = sum(scores) / len(scores) if scores else 0.0
    return RewardBreakdown(terms={"verdict_accuracy": mean, "verdicts": float(len(scores))}, total=mean)


def role_rewards(
    trajectory: Trajectory,
    gold: str,
    weights: RERWeights | None = None,
    graph_weights: GraphTermWeights | None = None,
) -> dict[Role, RewardBreakdown]:
    """Perceiver and reasoner share R = RER + R_graph; the reflector gets the rate of its right verdicts."""
    shared = trajectory_reward(trajectory, gold, weights, graph_weights)
    return {"perceiver": shared, "reasoner": shared, "reflector": reflector_reward(trajectory, gold)}


RewardFn = Callable[[Trajectory, str], dict[Role, RewardBreakdown]]


def load_reward_fn(spec: str) -> RewardFn:
    """A reward function named `package.module:function`, with `role_rewards`' signature minus the weights."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"reward function {spec!r} must be written module:function, e.g. my_rewards:format_only")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot load reward function {spec!r}: {error}") from error
    if not callable(function):
        raise ConfigError(f"reward function {spec!r} is a {type(function).__name__}, not a function")
    return function


# -- Graded SET format: partial credit where a small model never writes the whole format -------------------------

SETElement = tuple[int, bool]  # (step, closing tag?); step 0 is the \boxed{label}
PERCEIVER_SET_STEPS = (1,)  # the perceiver writes step 1 only, without a box
REASONER_SET_STEPS = (2, 3)  # the reasoner writes steps 2 and 3, then the box


def set_elements(steps: tuple[int, ...], boxed: bool) -> list[SETElement]:
    """The SET elements in their required order: <stepK>, </stepK> for each step, then \\boxed{label}."""
    return [(step, closing) for step in steps for closing in (False, True)] + ([(0, False)] if boxed else [])


def graded_set_format(
    text: str, label_set: LabelSet, *, steps: tuple[int, ...] = (1, 2, 3), boxed: bool = True, truncated: bool = False
) -> float:
    """g = (LCS(E, F) + 1[F opens the answer with E₀] + 1[LCS > 0 ∧ not cut off]) / (|E| + 2).

    The share of the strict SET check's conditions an answer meets: each element of E in order, the answer opening
    with the first element, and the answer not cut off at the length limit. E: the SET elements (`set_elements`).
    F: the elements as they occur in the text, read by the strict check's parser (`emo_r3.agents.parsing`, same tag
    tolerance): a step's tags count only if the step has content (inside its tags or right after them), the box
    only if it is the answer's last box and holds a label of `label_set`. LCS: the longest common subsequence, so
    an element earns credit only in the right order relative to the others, and repeats earn nothing. An answer
    with no SET element earns nothing for ending: stopping is not partly SET. g = 1 exactly when the strict layout
    check passes (with a labelled box when `boxed`) and no step is empty.
    """
    expected = set_elements(steps, boxed)
    tokens = set_tokens(text)
    kept = _kept_tokens(text, tokens, label_set, steps)
    matched = _in_order(expected, [(t.step, t.closing) for t in kept])
    opens = bool(kept) and kept[0] == tokens[0] and (kept[0].step, kept[0].closing) == expected[0]
    opens = opens and not text[: kept[0].start].strip()
    ends = matched > 0 and not truncated
    return (matched + opens + ends) / (len(expected) + 2)


def _kept_tokens(text: str, tokens: list[SETToken], label_set: LabelSet, steps: tuple[int, ...]) -> list[SETToken]:
    """The structural tokens that are SET elements: tags of steps with content, the last box if it holds a label.

    Empty steps earn nothing so that `<step1></step1>` alone, which the reference regex accepts, is not a way to
    collect format reward without writing the step.
    """
    parsed = parse_set(text, label_set, required_steps=steps)
    last_box = max((t.start for t in tokens if t.step == 0), default=-1)
    return [
        t
        for t in tokens
        if (t.step in parsed.steps) or (t.step == 0 and t.start == last_box and parsed.label is not None)
    ]


def _in_order(expected: list[SETElement], found: list[SETElement]) -> int:
    """|LCS(expected, found)| for an `expected` without repeats: best[j] = longest match ending at expected[j]."""
    position = {element: j for j, element in enumerate(expected)}
    best = [0] * len(expected)
    for element in found:
        j = position.get(element)
        if j is not None:
            best[j] = max(best[j], 1 + max(best[:j], default=0))
    return max(best, default=0)


def _role_format(trajectory: Trajectory, purpose: str, steps: tuple[int, ...], boxed: bool) -> float:
    """Mean graded SET format over the trajectory's calls made for `purpose` (0 when there are none)."""
    label_set = get_label_set(trajectory.label_set)
    scores = [
        graded_set_format(c.text, label_set, steps=steps, boxed=boxed, truncated=c.finish_reason == "length")
        for c in trajectory.calls
        if c.purpose == purpose
    ]
    return sum(scores) / len(scores) if scores else 0.0


def graded_format_rewards(trajectory: Trajectory, gold: str) -> dict[Role, RewardBreakdown]:
    """R_perceiver = g over its <step1>…</step1>; R_reasoner = g over its <step2>…<step3>…\\boxed{}; reflector as usual.

    Each role is scored on the part of the SET answer it writes (per-role credit; `gold` is not used by the format
    terms), so the two rewards differ: train with `algorithm.group_by: prompt_role`. Every breakdown also carries
    both roles' graded scores and the strict RER `format` term, so the trainer's metrics show all three.
    """
    perceiver = _role_format(trajectory, "perceive", PERCEIVER_SET_STEPS, boxed=False)
    reasoner = _role_format(trajectory, "reason", REASONER_SET_STEPS, boxed=True)
    strict = format_score(trajectory.reasonings[-1].format_ok) if trajectory.reasonings else 0.0
    terms = {"perceiver_format": perceiver, "reasoner_format": reasoner, "format": strict}
    return {
        "perceiver": RewardBreakdown(terms=terms, total=perceiver),
        "reasoner": RewardBreakdown(terms=terms, total=reasoner),
        "reflector": reflector_reward(trajectory, gold),
    }
