"""The reflective emotion graph: state, routing, nodes, batch execution and the `emo-r3` CLI."""

from graphs.config import ConfigError, GraphConfig, ModelSpec, RoleConfig, TransformersModelSpec, VLLMModelSpec
from graphs.emotion_graph import EmotionGraph
from graphs.trajectory import EmotionQuery, EmotionResult, GraphRunError, Reflection, Trajectory

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
    "Trajectory",
    "TransformersModelSpec",
    "VLLMModelSpec",
]
