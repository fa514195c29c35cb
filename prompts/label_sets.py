"""Emotion label sets: the closed vocabularies a result must come from, and how free text maps onto them."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, model_validator

Valence = Literal["positive", "negative", "neutral"]
Arousal = Literal["high", "low"]


class UnknownLabelSetError(ValueError):
    """Raised for a label-set name that is neither built in nor a comma-separated list."""


class LabelSet(BaseModel, frozen=True):
    """A named, ordered set of lower-case emotion labels with their synonyms and affect dimensions."""

    name: str
    labels: tuple[str, ...] = Field(min_length=2)
    synonyms: dict[str, str] = Field(default_factory=dict, description="free-text word -> label")
    valence: dict[str, Valence] = Field(default_factory=dict)
    arousal: dict[str, Arousal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> LabelSet:
        for label in self.labels:
            if label != label.strip().lower() or not label:
                raise ValueError(f"labels must be non-empty lower-case words, got {label!r}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"label set {self.name!r} repeats a label")
        stray = set(self.synonyms.values()) - set(self.labels)
        if stray:
            raise ValueError(f"synonyms point to labels outside the set: {sorted(stray)}")
        return self

    def normalize(self, text: str | None) -> str | None:
        """Map a model's free-text label ("Sad.", "Amused", "contentment!") to a label of this set, or None.

        The label itself first, exactly (ignoring case and surrounding whitespace), so no label can stand for
        another (`level2` is never `level`); then the text with punctuation and LaTeX wrappers dropped (letters of
        any script and digits kept); then simple inflections and the set's synonyms.
        """
        if not text:
            return None
        exact = text.strip().lower()
        if exact in self.labels:
            return exact
        key = _canonical(text)
        if not key:
            return None
        by_key = _label_keys(self.labels)
        for candidate in _variants(key):
            if candidate in by_key:
                return by_key[candidate]
            if candidate in self.synonyms:
                return self.synonyms[candidate]
        return None


def _canonical(text: str) -> str:
    """Lower-case words of any script and digits, single-spaced: LaTeX wrappers (\\text{..}), punctuation, quotes
    and underscores dropped, hyphens kept."""
    text = re.sub(r"\\[a-zA-Z]+\s*\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"[^\w\s-]|_", " ", text).lower()
    return " ".join(text.split())


@lru_cache(maxsize=256)
def _label_keys(labels: tuple[str, ...]) -> dict[str, str]:
    """Each label's canonical key -> the label; a key two labels share stands for neither (no guessing)."""
    keys: dict[str, list[str]] = {}
    for label in labels:
        keys.setdefault(_canonical(label), []).append(label)
    return {key: found[0] for key, found in keys.items() if key and len(found) == 1}


def _variants(key: str) -> list[str]:
    """The key itself, then simple inflections stripped (plural, -ness, -ed, -ing are covered by synonyms)."""
    out = [key]
    if key.endswith("ies"):
        out.append(key[:-3] + "y")
    if key.endswith("es"):
        out.append(key[:-2])
    if key.endswith("s") and not key.endswith("ss"):
        out.append(key[:-1])
    return out


_MIKELS_SYNONYMS = {
    "amused": "amusement", "amusing": "amusement", "fun": "amusement", "funny": "amusement",
    "humor": "amusement", "humour": "amusement", "playful": "amusement",
    "awed": "awe", "awestruck": "awe", "wonder": "awe", "amazement": "awe", "amazed": "awe",
    "content": "contentment", "contented": "contentment", "calm": "contentment", "peace": "contentment",
    "peaceful": "contentment", "serenity": "contentment", "serene": "contentment",
    "satisfaction": "contentment", "satisfied": "contentment", "relaxed": "contentment",
    "excited": "excitement", "exciting": "excitement", "thrill": "excitement", "thrilled": "excitement",
    "enthusiasm": "excitement", "joy": "excitement", "happy": "excitement", "happiness": "excitement",
    "angry": "anger", "rage": "anger", "fury": "anger", "furious": "anger", "annoyed": "anger",
    "disgusted": "disgust", "disgusting": "disgust", "revulsion": "disgust", "gross": "disgust",
    "afraid": "fear", "scared": "fear", "fearful": "fear", "terror": "fear", "frightened": "fear",
    "anxiety": "fear", "anxious": "fear", "horror": "fear",
    "sad": "sadness", "sorrow": "sadness", "grief": "sadness", "unhappy": "sadness", "melancholy": "sadness",
    "depressed": "sadness", "lonely": "sadness",
}  # fmt: skip

_EKMAN_SYNONYMS = {
    "angry": "anger", "rage": "anger", "annoyed": "anger", "furious": "anger",
    "disgusted": "disgust", "disgusting": "disgust", "gross": "disgust",
    "afraid": "fear", "scared": "fear", "fearful": "fear", "terror": "fear", "frightened": "fear",
    "happy": "joy", "happiness": "joy", "joyful": "joy", "amusement": "joy", "excitement": "joy",
    "contentment": "joy", "delight": "joy",
    "sad": "sadness", "sorrow": "sadness", "grief": "sadness", "unhappy": "sadness",
    "surprised": "surprise", "surprising": "surprise", "astonished": "surprise", "shock": "surprise",
    "shocked": "surprise", "amazed": "surprise",
}  # fmt: skip

MIKELS_8 = LabelSet(
    name="mikels8",
    labels=("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"),
    synonyms=_MIKELS_SYNONYMS,
    valence={
        "amusement": "positive", "awe": "positive", "contentment": "positive", "excitement": "positive",
        "anger": "negative", "disgust": "negative", "fear": "negative", "sadness": "negative",
    },
    arousal={
        "amusement": "high", "anger": "high", "disgust": "high", "excitement": "high", "fear": "high",
        "awe": "low", "contentment": "low", "sadness": "low",
    },
)  # fmt: skip

EMOTION_6 = LabelSet(
    name="emotion6",
    labels=("anger", "disgust", "fear", "joy", "sadness", "surprise"),
    synonyms=_EKMAN_SYNONYMS,
    valence={"anger": "negative", "disgust": "negative", "fear": "negative", "joy": "positive",
             "sadness": "negative", "surprise": "neutral"},
    arousal={"anger": "high", "disgust": "high", "fear": "high", "joy": "high", "sadness": "low",
             "surprise": "high"},
)  # fmt: skip

EKMAN_7 = LabelSet(
    name="ekman7",
    labels=(*EMOTION_6.labels, "neutral"),
    synonyms={**_EKMAN_SYNONYMS, "none": "neutral", "calm": "neutral", "indifferent": "neutral"},
    valence={**EMOTION_6.valence, "neutral": "neutral"},
    arousal={**EMOTION_6.arousal, "neutral": "low"},
)

PARROTT_6 = LabelSet(
    name="parrott6",
    labels=("anger", "fear", "joy", "love", "sadness", "surprise"),
    synonyms={k: v for k, v in _EKMAN_SYNONYMS.items() if v != "disgust"}
    | {"affection": "love", "loving": "love", "tenderness": "love", "romance": "love", "caring": "love"},
    valence={"anger": "negative", "fear": "negative", "joy": "positive", "love": "positive",
             "sadness": "negative", "surprise": "neutral"},
    arousal={"anger": "high", "fear": "high", "joy": "high", "love": "low", "sadness": "low",
             "surprise": "high"},
)  # fmt: skip

BUILTIN_LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (MIKELS_8, EMOTION_6, EKMAN_7, PARROTT_6)}


def get_label_set(spec: str | list[str] | LabelSet) -> LabelSet:
    """Resolve a built-in name (`mikels8`, `emotion6`, `ekman7`, `parrott6`) or a user list ("calm,tense")."""
    if isinstance(spec, LabelSet):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower().removeprefix("custom:")  # a custom set's own name resolves back to it
        if key in BUILTIN_LABEL_SETS:
            return BUILTIN_LABEL_SETS[key]
        if "," not in key:
            raise UnknownLabelSetError(
                f"unknown label set {spec!r}: use one of {sorted(BUILTIN_LABEL_SETS)} "
                "or a comma-separated list of your own labels, e.g. 'calm,tense,joyful'"
            )
        spec = key.split(",")
    labels = tuple(dict.fromkeys(label.strip().lower() for label in spec if label.strip()))
    if len(labels) < 2:
        raise UnknownLabelSetError(f"a custom label set needs at least two labels, got {list(labels)}")
    return LabelSet(name="custom:" + ",".join(labels), labels=labels)
