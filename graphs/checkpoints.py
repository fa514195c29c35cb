"""LangGraph checkpointers for the emotion graph: durable runs whose state reads back as the project's own types.

LangGraph's default serializer writes pydantic values with their module and class name and, on reading, imports
whatever a checkpoint names (warning that unregistered types "will be blocked"). `durable` gives a checkpointer a
serializer that reads back exactly the state's types (and LangGraph's safe built-ins) and refuses anything else, so a
checkpoint cannot make the reader import arbitrary code, and no warning is printed.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import maybe_add_typed_methods
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

from emo_r3.graphs.state import GraphState


def state_types(schema: type = GraphState) -> frozenset[tuple[str, str]]:
    """(module, class) of every pydantic model a value of the state can hold, nested ones included."""
    found: set[type[BaseModel]] = set()
    pending: list[Any] = list(get_type_hints(schema, include_extras=True).values())
    while pending:
        hint = pending.pop()
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            if hint not in found:
                found.add(hint)
                pending += [field.annotation for field in hint.model_fields.values()]
        elif get_origin(hint) is not None or isinstance(hint, types.UnionType):
            pending += [arg for arg in get_args(hint) if not isinstance(arg, str | int | float | bool)]
        elif typing.is_typeddict(hint):
            pending += list(get_type_hints(hint, include_extras=True).values())
    return frozenset((model.__module__, model.__name__) for model in found)


def durable(checkpointer: BaseCheckpointSaver | None) -> BaseCheckpointSaver | None:
    """The checkpointer (a shallow copy) reading back only the state's types; None stays None.

    A checkpointer with the default serializer gets a strict one allowing the state's types; one with its own
    serializer (e.g. encrypted) keeps it, with the state's types added to its allowlist."""
    if checkpointer is None:
        return None
    allowed = state_types()
    if type(checkpointer.serde) is not JsonPlusSerializer:
        return checkpointer.with_allowlist(allowed)
    clone = copy.copy(checkpointer)
    clone.serde = maybe_add_typed_methods(JsonPlusSerializer(allowed_msgpack_modules=allowed))
    return clone
