"""The role agents (perceiver, reasoner, reflector), the `ChatModel` interface every model sits behind, the record
of one LLM call, image intake, answer parsing, and model serving: `backends/` (in-process transformers, vLLM over
HTTP, scripted), `model_specs` (a config entry → a ChatModel) and `offline_models/` (models built with no hub).

Backends are imported from their own modules (`emo_r3.agents.backends.transformers.chat`) so torch loads only when
an in-process model does.
"""

from emo_r3.agents.call_record import ROLES, LLMCall, Role
from emo_r3.agents.chat_model import ChatMessage, ChatModel, Completion, ModelCallError, SamplingParams
from emo_r3.agents.images import ImageError, PreparedImage, prepare_image

__all__ = [
    "ROLES",
    "ChatMessage",
    "ChatModel",
    "Completion",
    "ImageError",
    "LLMCall",
    "ModelCallError",
    "PreparedImage",
    "Role",
    "SamplingParams",
    "prepare_image",
]
