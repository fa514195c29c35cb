"""Role agents (perceiver, reasoner, reflector), the ChatModel interface and its backends, and the LLM-call record.

Backends are imported from their modules (`agents.transformers_backend`) so that torch loads only when used.
"""

from agents.call_record import LLMCall
from agents.chat_model import ChatMessage, ChatModel, Completion, ModelCallError, SamplingParams
from agents.images import ImageError, PreparedImage, prepare_image

__all__ = [
    "ChatMessage",
    "ChatModel",
    "Completion",
    "ImageError",
    "LLMCall",
    "ModelCallError",
    "PreparedImage",
    "SamplingParams",
    "prepare_image",
]
