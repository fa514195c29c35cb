"""The graded SET format reward: hand-computed partial credit, equality with the strict check at the top, and the
per-role reward function a training config names."""

from __future__ import annotations

import pytest
from repo import ROOT

from emo_r3.agents.call_record import LLMCall, Purpose, Role
from emo_r3.agents.chat_model import FinishReason, SamplingParams
from emo_r3.agents.parsing import parse_set
from emo_r3.agents.reasoner import Reasoning
from emo_r3.graphs.trajectory import Trajectory
from emo_r3.prompts import get_label_set
from emo_r3.training.config import TrainConfig
from emo_r3.training.rewards import graded_format_rewards, graded_set_format, load_reward_fn, set_elements

MIKELS = get_label_set("mikels8")
FULL = "<step1>a dog runs</step1><step2>joy</step2><step3>positive, high</step3>\\boxed{amusement}"
REASONER = {"steps": (2, 3), "boxed": True}
PERCEIVER = {"steps": (1,), "boxed": False}


def test_elements_are_each_steps_tags_then_the_box() -> None:
    assert set_elements((2, 3), boxed=True) == [(2, False), (2, True), (3, False), (3, True), (0, False)]
    assert set_elements((1,), boxed=False) == [(1, False), (1, True)]


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        # (elements in order + opens with the first + ended) / (|E| + 2); the full answer has |E| = 7.
        (FULL, {}, 9 / 9),
        ("", {}, 0.0),
        ("I think it is amusement.", {}, 0.0),  # no element, so its ending earns nothing either
        ("<step1>a dog</step1> so \\boxed{awe}", {}, (3 + 1 + 1) / 9),
        # Out of order: either pair alone is in order, not both; and the answer does not open with <step1>.
        ("<step2>x</step2><step1>y</step1>", {"steps": (1, 2), "boxed": False}, (2 + 0 + 1) / 6),
        # The whole format, but cut off, or after a preamble.
        (FULL, {"truncated": True}, (7 + 1 + 0) / 9),
        ("Sure! " + FULL, {}, (7 + 0 + 1) / 9),
        ("  \n" + FULL, {}, 1.0),  # leading whitespace is allowed, as in the strict check
        # A box whose content is not a label is no element; only the answer's last box counts (|E| = 5).
        ("<step2>a</step2><step3>b</step3>\\boxed{banana}", REASONER, (4 + 2) / 7),
        ("<step2>a</step2><step3>b</step3>\\boxed{awe} or \\boxed{banana}", REASONER, (4 + 2) / 7),
        ("<step2>a</step2><step3>b</step3>\\boxed{banana} no, \\boxed{Awe.}", REASONER, 1.0),
        ("<step2>a</step2><step3>b</step3>\\boxed{awe", REASONER, (4 + 2) / 7),  # never closed
        # Tags with the strict check's tolerance (spacing, case); repeats earn nothing (|E| = 2).
        ("< Step2 >a< / step2 ><STEP3>b</step3 >\\boxed{fear}", REASONER, 1.0),
        ("<step1>a<step1>b<step1>c", PERCEIVER, (1 + 2) / 4),
        # Empty steps earn nothing; content right after the closing tag counts, as the parser reads it.
        ("<step1></step1>", PERCEIVER, 0.0),
        ("<step1><step1><step1>", PERCEIVER, 0.0),
        ("<step1></step1> a cat", PERCEIVER, 1.0),
        ("<step2></step2><step3>b</step3>\\boxed{awe}", REASONER, (3 + 0 + 1) / 7),
        # The perceiver's part.
        ("<step1>a cat on a mat</step1>", PERCEIVER, 1.0),
        ("<step1>a cat on a mat", PERCEIVER, (1 + 2) / 4),
        ("<step1>a cat on a mat</step1>", {**PERCEIVER, "truncated": True}, (2 + 1) / 4),
        ("A cat on a mat <step1>", {**PERCEIVER, "truncated": True}, 0.0),  # a step needs content
        ("A cat on <step1> a mat", {**PERCEIVER, "truncated": True}, 1 / 4),
        ("A cat. </step1>", PERCEIVER, 0.0),  # a step never opened has no content
    ],
)
def test_graded_format_by_hand(text: str, kwargs: dict, expected: float) -> None:
    assert graded_set_format(text, MIKELS, **kwargs) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "<step2>a</step2><step3>b</step3>\\boxed{awe}",
        "<step2></step2> calm <step3></step3> low \\boxed{contentment}",
        "<step2>a</step2><step3>b</step3>\\boxed{banana}",
        "x <step2>a</step2><step3>b</step3>\\boxed{awe}",
        "<step3>b</step3><step2>a</step2>\\boxed{awe}",
        "<step2>a</step2>\\boxed{awe}<step3>b</step3>",
        "<step2>a<step3>b\\boxed{fear}",
        "<step2></step2><step3>b</step3>\\boxed{awe}",
    ],
)
@pytest.mark.parametrize("truncated", [False, True])
def test_full_credit_exactly_when_the_strict_check_passes_without_empty_steps(text: str, truncated: bool) -> None:
    strict = parse_set(text, MIKELS, required_steps=(2, 3), truncated=truncated)
    graded = graded_set_format(text, MIKELS, steps=(2, 3), truncated=truncated)
    assert (graded == 1.0) == (strict.format_ok and strict.label is not None and set(strict.steps) == {2, 3})


def test_long_junk_is_fast_and_scores_nothing() -> None:
    assert graded_set_format("<step" * 20_000 + "\\boxed{" * 20_000, MIKELS) == 0.0


def _call(role: Role, purpose: Purpose, text: str, finish: FinishReason = "stop") -> LLMCall:
    sampling = SamplingParams(temperature=1.0, max_tokens=32)
    node = "reason" if purpose == "reason" else purpose
    return LLMCall(
        role=role, purpose=purpose, node=node, round=0, model_id="m", messages=[], sampling=sampling, text=text,
        finish_reason=finish,
    )  # fmt: skip


def _trajectory(calls: list[LLMCall], strict_ok: bool = False) -> Trajectory:
    reasoning = Reasoning(
        feeling="", affect="", valence=None, arousal=None, boxed=None, label="awe", label_source="closed_set",
        format_ok=strict_ok,
    )  # fmt: skip
    return Trajectory(query_id="q", label_set="mikels8", calls=calls, reasonings=[reasoning], termination="max_rounds")


def test_reward_function_scores_each_role_on_its_own_part() -> None:
    trajectory = _trajectory(
        [
            _call("perceiver", "perceive", "<step1>a cat on a mat"),
            _call("reasoner", "reason", "<step2>calm</step2> and \\boxed{contentment}"),
            _call("reasoner", "label_choice", "<step2>x</step2><step3>y</step3>\\boxed{awe}"),  # not a SET answer
        ]
    )
    rewards = load_reward_fn("emo_r3.training.rewards:graded_format_rewards")(trajectory, "awe")
    assert rewards["perceiver"].total == pytest.approx(3 / 4)
    assert rewards["reasoner"].total == pytest.approx(5 / 7)
    terms = {"perceiver_format": 3 / 4, "reasoner_format": 5 / 7, "format": 0.0}
    assert rewards["reasoner"].terms == pytest.approx(terms)
    assert rewards["reflector"].total == 0.0  # no verdicts in this trajectory


def test_reward_function_averages_rounds_and_reads_the_strict_term() -> None:
    trajectory = _trajectory(
        [
            _call("perceiver", "perceive", "<step1>a</step1>"),
            _call("perceiver", "perceive", "<step1>a</step1>", finish="length"),
        ],
        strict_ok=True,
    )
    rewards = graded_format_rewards(trajectory, "awe")
    assert rewards["perceiver"].total == pytest.approx((1.0 + 3 / 4) / 2)
    assert rewards["reasoner"].total == 0.0  # no reasoner call
    assert rewards["perceiver"]["format"] == 1.0


def test_the_demo_config_names_this_reward_with_per_role_groups() -> None:
    """configs/train-smollm2-demo.yaml: per-role rewards need per-role advantage groups."""
    config = TrainConfig.load(ROOT / "configs" / "train-smollm2-demo.yaml")
    assert load_reward_fn(config.algorithm.reward_fn or "") is graded_format_rewards
    assert config.algorithm.group_by == "prompt_role"
