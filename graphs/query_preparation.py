"""Turn a query as given (an EmotionQuery, or its JSON) into what the nodes work on: images decoded and fitted to the
config's pixel budget, the label set resolved."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from emo_r3.agents.images import ImageError, prepare_image
from emo_r3.graphs.config import ImageConfig
from emo_r3.graphs.state import PreparedQuery
from emo_r3.graphs.trajectory import EmotionQuery
from emo_r3.prompts import LabelSet, UnknownLabelSetError, get_label_set

# What preparing raises for input it cannot use; runs turn these into an error result.
BAD_INPUT_ERRORS = (ImageError, UnknownLabelSetError, ValidationError)


def as_query(given: EmotionQuery | dict[str, Any] | None) -> EmotionQuery:
    """The query; JSON (a dict, e.g. from LangGraph's server) is validated. Raises ValidationError."""
    return given if isinstance(given, EmotionQuery) else EmotionQuery.model_validate(given)


def query_id_of(given: EmotionQuery | dict[str, Any] | None) -> str:
    """The id a query was given, even when the rest of it was refused ("" when it has none)."""
    if isinstance(given, EmotionQuery):
        return given.id
    return str((given or {}).get("id", ""))


def prepare_query(query: EmotionQuery, image: ImageConfig, default_label_set: LabelSet) -> PreparedQuery:
    """Decode and normalise the images and resolve the label set; raises one of BAD_INPUT_ERRORS."""
    images = tuple(
        prepare_image(data, max_pixels=image.max_pixels, max_decode_pixels=image.max_decode_pixels)
        for data in query.images
    )
    label_set = get_label_set(query.label_set) if query.label_set else default_label_set
    return PreparedQuery(id=query.id, images=images, text=query.text, label_set=label_set)
