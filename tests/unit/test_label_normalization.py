"""Custom label sets of any script, with digits: a label always maps to itself and never to another label, in the
normaliser and in the SET parser (`\\boxed{colère}` is colère; `level2` is never `level`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emo_r3.agents.parsing import parse_set
from emo_r3.prompts import MIKELS_8, LabelSet, get_label_set

# Words as people name classes: letters of any script, digits, inner hyphens.
WORD = st.text(
    alphabet=st.characters(categories=("Ll", "Lu", "Lo", "Nd"), exclude_characters="İ"), min_size=1, max_size=12
).map(str.lower)
LABEL = st.one_of(WORD, st.tuples(WORD, WORD).map("-".join))
LABEL_SETS = st.lists(LABEL, min_size=2, max_size=8, unique=True).filter(
    lambda labels: all(label == label.strip().lower() for label in labels)
)


def custom(labels: list[str]) -> LabelSet:
    return LabelSet(name="custom:" + ",".join(labels), labels=tuple(labels))


@settings(max_examples=300, deadline=None)
@given(LABEL_SETS)
def test_every_label_of_any_set_maps_to_itself(labels: list[str]) -> None:
    label_set = custom(labels)
    for label in labels:
        for written in (label, f"  {label}. ", f'"{label}"', f"\\text{{{label}}}", f"**{label}**"):
            assert label_set.normalize(written) == label, written


@settings(max_examples=300, deadline=None)
@given(LABEL_SETS)
def test_a_boxed_label_parses_as_itself_and_passes_the_format(labels: list[str]) -> None:
    label_set = custom(labels)
    for label in labels:
        answer = f"<step2>A feeling.</step2><step3>valence: positive; arousal: low</step3> \\boxed{{{label}}}"
        parsed = parse_set(answer, label_set, required_steps=(2, 3))
        assert parsed.label == label and parsed.format_ok, parsed.problems


@settings(max_examples=200, deadline=None)
@given(LABEL_SETS, st.text(max_size=30))
def test_nothing_maps_outside_the_set(labels: list[str], text: str) -> None:
    assert custom(labels).normalize(text) in (None, *labels)


@pytest.mark.parametrize(
    ("spec", "text", "label"),
    [
        ("colère,joie", "colère", "colère"),
        ("colère,joie", "Colère", "colère"),
        ("class1,class2", "class2", "class2"),
        ("level,level2", "level2", "level2"),
        ("level,level2", "Level", "level"),
        ("悲しみ,喜び", "喜び", "喜び"),
        ("a-b,ab", "a-b", "a-b"),
    ],
)
def test_custom_sets_from_the_command_line(spec: str, text: str, label: str) -> None:
    assert get_label_set(spec).normalize(text) == label


@pytest.mark.parametrize(
    ("text", "label"), [("level2", None), ("sadness1", None), ("Sad.", "sadness"), ("awes", "awe")]
)
def test_digits_are_part_of_a_word(text: str, label: str | None) -> None:
    assert MIKELS_8.normalize(text) == label
