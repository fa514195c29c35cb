"""Versioned prompt templates and emotion label sets. Imports nothing else from the project."""

from emo_r3.prompts.label_sets import (
    BUILTIN_LABEL_SETS,
    EKMAN_7,
    EMOTION_6,
    MIKELS_8,
    PARROTT_6,
    LabelSet,
    UnknownLabelSetError,
    get_label_set,
)
from emo_r3.prompts.rendering import PROMPT_VERSION, render

__all__ = [
    "BUILTIN_LABEL_SETS",
    "EKMAN_7",
    "EMOTION_6",
    "MIKELS_8",
    "PARROTT_6",
    "PROMPT_VERSION",
    "LabelSet",
    "UnknownLabelSetError",
    "get_label_set",
    "render",
]
