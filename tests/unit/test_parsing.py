"""Parsers of model text: table-driven rules, plus properties (never raise, round-trip, reference parity)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emo_r3.agents.parsing import parse_choice, parse_perception, parse_set, parse_yes_no, set_format_ok
from emo_r3.prompts.label_sets import BUILTIN_LABEL_SETS, EMOTION_6, MIKELS_8

GOOD = "\n".join(
    [
        "<step1>A clown juggles.</step1>",
        "<step2>I feel amused.</step2>",
        "<step3>positive, high</step3>",
        "\\boxed{amusement}",
    ]
)


# --- steps -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        (GOOD, {1: "A clown juggles.", 2: "I feel amused.", 3: "positive, high"}),
        ("<step2></step2> calm <step3></step3>\nnegative \\boxed{fear}", {2: "calm", 3: "negative"}),
        ("<step2> I feel calm\n<step3> low arousal \\boxed{awe}", {2: "I feel calm", 3: "low arousal"}),
        ("<step1>scene</step1><step2>feeling", {1: "scene", 2: "feeling"}),
        ("< step2 >calm</ Step2><STEP3 >x< / step3>", {2: "calm", 3: "x"}),
        ("<\nstep1\n>a<\n/\nstep1\n>", {1: "a"}),
        ("<step1>inside</step1> after", {1: "inside"}),
        ("<step1></step1><step1>second</step1>", {1: "second"}),
        ("<step1><step1><step1>looped", {1: "looped"}),
        ("<step2>  </step2>   <step3>", {}),
        ("<step 1>spaced digit</step 1><step01>zero</step01>", {}),
        ("<ſtep1>long s</ſtep1><step\u00a0>nbsp</step2>", {}),
        ("<\u00a0step1\u2003>unicode spaces</step1>", {1: "unicode spaces"}),
        ("</step2> orphan closing tag", {}),
        ("no tags at all", {}),
        ("", {}),
    ],
)
def test_steps(text: str, steps: dict[int, str]) -> None:
    assert parse_set(text, MIKELS_8).steps == steps


@pytest.mark.parametrize(
    ("text", "required", "problem"),
    [
        ("<step1>a</step1><step3>b</step3>\\boxed{awe}", (1, 2, 3), "step2 missing"),
        ("<step1>a</step1><step2></step2><step3>b</step3>\\boxed{awe}", (1, 2, 3), "step2 is empty"),
        ("<step2>a</step2><step3>b</step3>\\boxed{awe}", (1, 2, 3), "step1 missing"),
    ],
)
def test_step_problems(text: str, required: tuple[int, ...], problem: str) -> None:
    assert problem in parse_set(text, MIKELS_8, required_steps=required).problems


# --- box and label ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxed_text", "boxed", "label"),
    [
        ("\\boxed{awe}", "awe", "awe"),
        ("\\boxed{AWE}", "AWE", "awe"),
        ("\\boxed{Sad.}", "Sad.", "sadness"),
        ("\\boxed{ fears }", "fears", "fear"),
        ("\\boxed{amused}", "amused", "amusement"),
        ("\\boxed{\\text{awe}}", "\\text{awe}", "awe"),
        ("\\boxed{\\textbf{\\text{Anger}}}", "\\textbf{\\text{Anger}}", None),
        ("\\boxed{fear} then \\boxed{awe}", "awe", "awe"),
        ("\\boxed{\\boxed{disgust}}", "disgust", "disgust"),
        ("\\boxed{a{b}c}", "a{b}c", None),
        ("\\boxed{fear} and a cut-off \\boxed{aw", None, None),
        ("\\boxed{}", "", None),
        ("\\boxed{happy-ish}", "happy-ish", None),
    ],
)
def test_boxed_and_label(boxed_text: str, boxed: str | None, label: str | None) -> None:
    parsed = parse_set(boxed_text, MIKELS_8)
    assert (parsed.boxed, parsed.label) == (boxed, label)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<step1>a</step1>", "no \\boxed{} label"),
        ("\\boxed{happy-ish}", "label 'happy-ish' is not in mikels8"),
        ("\\boxed{}", "empty \\boxed{}"),
        ("\\boxed{awe", "the last \\boxed{ is never closed"),
        ("\\boxed{" + "x" * 500 + "}", "label '" + "x" * 37 + "...' is not in mikels8"),
    ],
)
def test_label_problems(text: str, problem: str) -> None:
    parsed = parse_set(text, MIKELS_8)
    assert parsed.label is None
    assert problem in parsed.problems


def test_label_uses_the_given_label_set() -> None:
    assert parse_set("\\boxed{happy}", EMOTION_6).label == "joy"
    assert parse_set("\\boxed{awe}", EMOTION_6).problems[-2:] == [
        "label 'awe' is not in emotion6",
        "not in the <step1>…</step1> … <step2>…</step2> … <step3>…</step3> … \\boxed{} layout",
    ]


# --- valence and arousal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step3", "valence", "arousal"),
    [
        ("Positive valence, high arousal", "positive", "high"),
        ("NEGATIVE and LOW", "negative", "low"),
        ("unpleasant, intense", "negative", "high"),
        ("pleasant; low-arousal", "positive", "low"),
        ("neutral", "neutral", None),
        ("positive or negative? high or low?", None, None),
        ("neutral to positive", None, None),
        ("positively highly lowered", None, None),
        ("poſitive, hıgh, hİgh", None, None),
        ("ıntenſe but POSITIVE", "positive", None),
        ("", None, None),
    ],
)
def test_valence_arousal_from_step3(step3: str, valence: str | None, arousal: str | None) -> None:
    parsed = parse_set(f"<step3>{step3}</step3>\\boxed{{awe}}", MIKELS_8)
    assert (parsed.valence, parsed.arousal) == (valence, arousal)


def test_valence_ignores_other_steps() -> None:
    parsed = parse_set("<step2>positive, high</step2><step3>negative low</step3>", MIKELS_8)
    assert (parsed.valence, parsed.arousal) == ("negative", "low")
    assert parse_set("<step2>positive, high</step2>", MIKELS_8).valence is None


# --- format check ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "required", "ok"),
    [
        (GOOD, (1, 2, 3), True),
        ("  \n" + GOOD + " trailing words", (1, 2, 3), True),
        ("< step1 >a< / step1 ><step2>b</step2><step3>c</step3>\\boxed{awe}", (1, 2, 3), True),
        ("<step1></step1>x<step2></step2>y<step3></step3>z\\boxed{}", (1, 2, 3), True),
        ("<STEP1>a</Step1><step2>b</step2><step3>c</step3>\\boxed{awe}", (1, 2, 3), True),
        ("Sure! " + GOOD, (1, 2, 3), False),
        ("<step1>a</step1><step3>c</step3><step2>b</step2>\\boxed{awe}", (1, 2, 3), False),
        ("<step1>a</step1><step2>b</step2><step3>c</step3>", (1, 2, 3), False),
        ("<step1>a</step1><step2>b</step2><step3>c</step3>\\boxed{awe", (1, 2, 3), False),
        ("<step1>a</step1><step2>b</step2><step3>c\\boxed{awe}", (1, 2, 3), False),
        ("<step1>a</step1><step2>b\\boxed{awe}</step2><step3>c</step3>", (1, 2, 3), False),
        ("<step2>b</step2><step3>c</step3>\\boxed{awe}", (2, 3), True),
        ("<step2>b</step2><step3>c</step3>\\boxed{awe}", (1, 2, 3), False),
        (GOOD, (2, 3), False),
        ("\\boxed{awe}", (), True),
        (" \\boxed{awe}", (), False),
        ("", (1, 2, 3), False),
    ],
)
def test_format_check(text: str, required: tuple[int, ...], ok: bool) -> None:
    assert set_format_ok(text, required) is ok
    assert parse_set(text, MIKELS_8, required_steps=required).format_ok is ok


def test_good_answer_has_no_problems() -> None:
    parsed = parse_set(GOOD, MIKELS_8)
    assert parsed.format_ok
    assert parsed.problems == []
    assert (parsed.label, parsed.valence, parsed.arousal) == ("amusement", "positive", "high")


def test_truncated_fails_format_and_says_why() -> None:
    parsed = parse_set(GOOD, MIKELS_8, truncated=True)
    assert not parsed.format_ok
    assert parsed.problems == ["answer cut off at the length limit"]
    assert parsed.label == "amusement"


def test_repetition_loop_cut_off() -> None:
    text = "<step1>A street.</step1><step2>" + "I feel I feel " * 500
    parsed = parse_set(text, MIKELS_8, truncated=True)
    assert parsed.steps[1] == "A street."
    assert parsed.steps[2].startswith("I feel I feel")
    assert (parsed.boxed, parsed.label, parsed.format_ok) == (None, None, False)
    expected = {"answer cut off at the length limit", "step3 missing", "no \\boxed{} label"}
    assert expected <= set(parsed.problems)


def test_models_are_frozen() -> None:
    parsed = parse_set(GOOD, MIKELS_8)
    with pytest.raises(ValueError, match="frozen"):
        parsed.label = "awe"


# --- perception ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "truncated", "body", "ok", "problems"),
    [
        ("<step1> A dog runs. </step1>", False, "A dog runs.", True, []),
        ("<step1></step1> A dog runs.", False, "A dog runs.", True, []),
        ("<step1> A dog runs", False, "A dog runs", True, []),
        ("  A dog runs.  ", False, "A dog runs.", False, ["step1 missing"]),
        ("<step1> </step1>", False, "", False, ["step1 is empty"]),
        ("<step1>A dog", True, "A dog", False, ["answer cut off at the length limit"]),
        ("", False, "", False, ["step1 missing"]),
    ],
)
def test_perception(text: str, truncated: bool, body: str, ok: bool, problems: list[str]) -> None:
    parsed = parse_perception(text, truncated=truncated)
    assert (parsed.text, parsed.format_ok, parsed.problems) == (body, ok, problems)


# --- closed-set and yes/no answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("awe", "awe"),
        ("  Awe.\n", "awe"),
        ("'AWE'", "awe"),
        ('"fear"', "fear"),
        ("**Sadness**", "sadness"),
        ("“contentment”", "contentment"),
        ("not sure about awe", None),
        ("awe or fear", None),
        ("awesome", None),
        ("sad", None),
        ("", None),
        ("...", None),
    ],
)
def test_parse_choice(text: str, choice: str | None) -> None:
    assert parse_choice(text, MIKELS_8.labels) == choice


def test_parse_choice_ambiguous_options() -> None:
    assert parse_choice("awe", ["Awe", "awe."]) is None
    assert parse_choice("awe", ["awe", "awe"]) == "awe"
    assert parse_choice("awe", []) is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        (" no", "no"),
        ("YES", "yes"),
        ("No!", "no"),
        ("'no'", "no"),
        ("not", None),
        ("none", None),
        ("no idea", None),
        ("yes and no", None),
        ("Yes, it does.", None),
        ("nope", None),
        ("", None),
    ],
)
def test_parse_yes_no(text: str, answer: str | None) -> None:
    assert parse_yes_no(text) == answer


# --- properties ------------------------------------------------------------------------------------------

FRAGMENTS = [
    "<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "< step2 >", "</ Step3>", "<STEP1>",
    "<", ">", "/", "step", "1", "\\boxed{", "\\text{", "{", "}", "\\", " ", "\n", "awe", "Sad.", "positive",
    "negative", "high", "low", "yes", "no", "not", "ſ", "ı", "İ", "\u00a0", "poſitive",
]  # fmt: skip
TAGGY = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=600).map("".join)
TEXTS = st.text(max_size=3000) | st.text(alphabet="<>/{}\\ stepSTEP123boxedſı\u00a0\n", max_size=3000) | TAGGY
REQUIRED = st.sampled_from([(1, 2, 3), (2, 3), (1,), ()])


@given(TEXTS, st.sampled_from(sorted(BUILTIN_LABEL_SETS)), REQUIRED, st.booleans())
@settings(max_examples=300, deadline=None)
def test_parsers_never_raise(text: str, set_name: str, required: tuple[int, ...], truncated: bool) -> None:
    parsed = parse_set(text, BUILTIN_LABEL_SETS[set_name], required_steps=required, truncated=truncated)
    assert parsed.format_ok == (set_format_ok(text, required) and not truncated)
    assert parsed.label is None or parsed.label in BUILTIN_LABEL_SETS[set_name].labels
    assert all(content == content.strip() and content for content in parsed.steps.values())
    parse_perception(text, truncated=truncated)
    assert parse_choice(text, MIKELS_8.labels) in (None, *MIKELS_8.labels)
    assert parse_yes_no(text) in (None, "yes", "no")


def _reference_format_ok(text: str, required: tuple[int, ...]) -> bool:
    """The reference code's check (whitespace around <, > and / deleted, then a DOTALL fullmatch)."""
    squeezed = re.sub(r"\s*([<>/])\s*", r"\1", text)
    pattern = "".join(f"<step{n}>.*</step{n}>.*" for n in required) + r"\\boxed\{.*\}.*"
    return re.fullmatch(pattern, squeezed, re.DOTALL) is not None


LOWER_FRAGMENTS = [f for f in FRAGMENTS if f == f.lower() or f.startswith("\\")] + ["x", " < ", " / "]


@st.composite
def near_valid_answers(draw: st.DrawFn) -> tuple[str, tuple[int, ...]]:
    """The SET skeleton with pieces dropped, replaced or surrounded by junk: both outcomes are common."""
    required = draw(REQUIRED)
    tags = [piece for n in required for piece in (f"<step{n}>", "x", f"</step{n}>")]
    parts = []
    for piece in [*tags, "\\boxed{", "awe", "}"]:
        fate = draw(st.integers(0, 9))
        parts.append("" if fate == 0 else draw(st.sampled_from(LOWER_FRAGMENTS)) if fate == 1 else piece)
        parts += draw(st.lists(st.sampled_from(LOWER_FRAGMENTS), max_size=2))
    return "".join(parts), draw(REQUIRED) if draw(st.integers(0, 3)) == 0 else required


JUNK = st.tuples(st.lists(st.sampled_from(LOWER_FRAGMENTS), max_size=30).map("".join), REQUIRED)


@given(near_valid_answers() | JUNK)
@settings(max_examples=500, deadline=None)
def test_format_check_matches_reference_on_lower_case_tags(answer: tuple[str, tuple[int, ...]]) -> None:
    text, required = answer
    assert set_format_ok(text, required) == _reference_format_ok(text, required)


CONTENT = st.text(alphabet="abcdefghij XYZ.,;:!?'-\n0123", min_size=1, max_size=80).filter(str.strip)
OPENERS = ["<step{}>", "< step{} >", "<STEP{}>", "<Step{}\n>"]
CLOSERS = ["</step{}>", "</ step{} >", "< /STEP{}>", "</Step{}>"]
LABEL_FORMS = ["{}", "{}.", " {} ", "\\text{{{}}}", "'{}'"]
SPACE = st.sampled_from(["", " ", "\n", "\n\n", "  "])


@st.composite
def set_answers(draw: st.DrawFn) -> tuple[str, tuple[int, ...], dict[int, str], str, bool]:
    """An answer built from valid parts, with random placement, spacing and tag case."""
    required = draw(st.sampled_from([(1, 2, 3), (2, 3)]))
    contents = {step: draw(CONTENT) for step in required}
    parts = [draw(SPACE)]
    all_closed = True
    for step in required:
        placement = draw(st.sampled_from(["inside", "after", "unclosed"]))
        opener = draw(st.sampled_from(OPENERS)).format(step)
        closer = draw(st.sampled_from(CLOSERS)).format(step)
        if placement == "inside":
            parts += [opener, contents[step], closer]
        elif placement == "after":
            parts += [opener, draw(SPACE), closer, draw(SPACE), contents[step]]
        else:
            parts += [opener, contents[step]]
            all_closed = False
        parts.append(draw(SPACE))
    label = draw(st.sampled_from(MIKELS_8.labels))
    shown = "".join(c.upper() if draw(st.booleans()) else c for c in label)
    parts += ["\\boxed{", draw(st.sampled_from(LABEL_FORMS)).format(shown), "}", draw(SPACE)]
    return "".join(parts), required, {s: c.strip() for s, c in contents.items()}, label, all_closed


@given(set_answers())
@settings(max_examples=300, deadline=None)
def test_valid_parts_round_trip(answer: tuple[str, tuple[int, ...], dict[int, str], str, bool]) -> None:
    text, required, steps, label, all_closed = answer
    parsed = parse_set(text, MIKELS_8, required_steps=required)
    assert parsed.steps == steps
    assert parsed.label == label
    assert parsed.format_ok is all_closed


OPTION = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC -0123", min_size=1, max_size=20).filter(
    lambda s: s.strip(" -")
)


@given(
    st.lists(OPTION, min_size=1, max_size=8, unique_by=lambda s: " ".join(s.split()).strip(" -").lower()),
    st.data(),
)
@settings(max_examples=300, deadline=None)
def test_choice_recovers_option(options: list[str], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(options))
    cased = "".join(c.swapcase() if data.draw(st.booleans()) else c for c in option)
    period = data.draw(st.sampled_from(["", "."]))
    text = data.draw(SPACE) + cased + period + data.draw(SPACE)
    assert parse_choice(text, options) == option


# --- pathological input ----------------------------------------------------------------------------------

N = 100_000
ADVERSARIAL = [
    "<step1>" * (N // 7),
    "<step1></step1>" * (N // 15),
    "<" + " " * N,
    "< " * (N // 2),
    "</ " * (N // 3),
    "<step" + "1" * N,
    "<step1" + " " * N,
    "\\boxed{" * (N // 7),
    "\\boxed{" + "{" * N,
    "\\boxed{" + "}" * N,
    "\\boxed{" + "\\text{" * (N // 6),
    "\\boxed{\\" + "a" * N + "}",
    "<step1>" + "a" * N,
    "<step3>" + "positive or negative " * (N // 21),
    ("<step1>a</step1><step2>b</step2><step3>c</step3>" * (N // 48)) + "\\boxed{",
    "{}" * (N // 2),
    "y" * N,
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_pathological_input_is_fast(text: str) -> None:
    for required in [(1, 2, 3), (2, 3)]:
        parse_set(text, MIKELS_8, required_steps=required, truncated=True)
        set_format_ok(text, required)
    parse_perception(text)
    parse_choice(text, MIKELS_8.labels)
    parse_yes_no(text)
