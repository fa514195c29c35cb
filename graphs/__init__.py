"""The reflective emotion graph: its config, state, routing, nodes, results and batch execution.

Rooms of their own inside: `emo_r3.graphs.traces` (the trace store, its recorder, OpenTelemetry export, CLI and
web viewer) and `emo_r3.graphs.cli` (the `emo-r3` command line). The graph sees recording only through
`RunRecorder`.

The names below load on first use, so importing a room (e.g. the trace store for `emo-r3 traces list`) does not
import LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emo_r3.agents.model_specs import ConfigError, ModelSpec, TransformersModelSpec, VLLMModelSpec
    from emo_r3.graphs.config import GraphConfig, RoleConfig
    from emo_r3.graphs.emotion_graph import EmotionGraph
    from emo_r3.graphs.recording import RunRecorder
    from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult, GraphRunError, Reflection, Trajectory

_SOURCES = {
    "ConfigError": "emo_r3.agents.model_specs",
    "ModelSpec": "emo_r3.agents.model_specs",
    "TransformersModelSpec": "emo_r3.agents.model_specs",
    "VLLMModelSpec": "emo_r3.agents.model_specs",
    "GraphConfig": "emo_r3.graphs.config",
    "RoleConfig": "emo_r3.graphs.config",
    "EmotionGraph": "emo_r3.graphs.emotion_graph",
    "RunRecorder": "emo_r3.graphs.recording",
    "EmotionQuery": "emo_r3.graphs.trajectory",
    "EmotionResult": "emo_r3.graphs.trajectory",
    "GraphRunError": "emo_r3.graphs.trajectory",
    "Reflection": "emo_r3.graphs.trajectory",
    "Trajectory": "emo_r3.graphs.trajectory",
}
__all__ = [
    "ConfigError",
    "EmotionGraph",
    "EmotionQuery",
    "EmotionResult",
    "GraphConfig",
    "GraphRunError",
    "ModelSpec",
    "Reflection",
    "RoleConfig",
    "RunRecorder",
    "Trajectory",
    "TransformersModelSpec",
    "VLLMModelSpec",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
