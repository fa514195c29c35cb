"""Dataset labels onto a label set: folder and file-name labels, and the label set a column of answers comes from."""

from __future__ import annotations

import re
from collections.abc import Iterable

from emo_r3.prompts.label_sets import BUILTIN_LABEL_SETS, MIKELS_8, LabelSet, get_label_set


def label_from_name(label_set: LabelSet, name: str) -> str | None:
    """Normalise a folder or file-name label; beyond `LabelSet.normalize`, accept a unique prefix of 3+ letters.

    Dataset folders abbreviate (`amuse`, `excite`); a free-text model answer never goes through this path.
    """
    label = label_set.normalize(name)
    if label:
        return label
    key = re.sub(r"[^a-z]", "", name.lower())
    if len(key) < 3:
        return None
    hits = [candidate for candidate in label_set.labels if candidate.startswith(key)]
    return hits[0] if len(hits) == 1 else None


def infer_label_set(answers: Iterable[str]) -> LabelSet:
    """The label set a column of answers comes from; Mikels-8 unless the answers clearly say otherwise.

    In order: a built-in set (Mikels-8 first) that contains every distinct answer verbatim; else one into which
    every answer normalises; else the built-in set that takes the most answers. Only when no answer fits any
    built-in set does the set become the custom set of the distinct answers (e.g. `positive,negative`).
    """
    distinct = sorted({" ".join(a.lower().split()) for a in answers if a and a.strip()})
    if not distinct:
        return MIKELS_8
    sets = list(BUILTIN_LABEL_SETS.values())
    for label_set in sets:
        if set(distinct) <= set(label_set.labels):
            return label_set
    counts = [sum(label_set.normalize(a) is not None for a in distinct) for label_set in sets]
    best = max(counts)
    if best == 0 and len(distinct) >= 2:
        return get_label_set(distinct)
    return sets[counts.index(best)]
