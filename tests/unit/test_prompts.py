import pytest

from emo_r3.prompts import MIKELS_8, PARROTT_6, UnknownLabelSetError, get_label_set, render


def test_user_text_is_data_not_template_source():
    hostile = "{{ 7 * 7 }} {% for x in range(3) %}loop{% endfor %} {{ ''.__class__.__mro__ }}"
    prompt = render("perceiver", context=hostile, feedback=None)
    assert hostile in prompt
    assert "49" not in prompt and "looploop" not in prompt


def test_every_template_names_its_labels_and_formats():
    labels = MIKELS_8.labels
    reasoner = render("reasoner", context=None, perception="a dog", labels=labels, feedback=None, previous_label=None)
    assert "<step2>" in reasoner and "<step3>" in reasoner and "\\boxed{" in reasoner
    assert all(label in reasoner for label in labels)
    coherence = render("coherence", perception="a dog", feeling="calm", labels=labels)
    assert "a dog" in coherence and "calm" in coherence and "awe" in coherence
    assert "yes or no" in render("consistency", perception="a dog")


def test_missing_variable_is_an_error_not_an_empty_prompt():
    with pytest.raises(Exception, match="perception"):
        render("coherence", feeling="calm", labels=MIKELS_8.labels)


def test_correction_feedback_names_both_labels():
    text = render("correction", check="coherence", implied_label="fear", answered_label="awe")
    assert "fear" in text and "awe" in text
    assert "did not match the image" in render("correction", check="consistency")


@pytest.mark.parametrize(
    ("raw", "label"),
    [("Sad.", "sadness"), ("AWE", "awe"), ("contents", "contentment"), ("\\text{Fear}", "fear"),
     ("amused", "amusement"), ("purple", None), ("", None), ("  ", None)],
)  # fmt: skip
def test_mikels_normalisation(raw, label):
    assert MIKELS_8.normalize(raw) == label


def test_label_set_resolution():
    assert get_label_set("Mikels8") is MIKELS_8
    assert get_label_set("parrott6") is PARROTT_6
    custom = get_label_set("Calm, tense,calm")
    assert custom.labels == ("calm", "tense")
    assert custom.normalize("Tense!") == "tense"
    with pytest.raises(UnknownLabelSetError, match="mikels8"):
        get_label_set("plutchik")
    with pytest.raises(UnknownLabelSetError, match="two labels"):
        get_label_set("calm,")


def test_affect_tables_cover_every_label():
    for label in MIKELS_8.labels:
        assert MIKELS_8.valence[label] in ("positive", "negative")
        assert MIKELS_8.arousal[label] in ("high", "low")
