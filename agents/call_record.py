"""The record of one LLM call, exactly as the model produced it: the unit traces store and training trains on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from emo_r3.agents.chat_model import ChatMessage, Completion, FinishReason, LogprobMode, SamplingParams, Usage

Role = Literal["perceiver", "reasoner", "reflector"]
ROLES: tuple[Role, ...] = ("perceiver", "reasoner", "reflector")
# What the call was for: a role can make several kinds of call (the reflector asks two different questions).
Purpose = Literal["perceive", "reason", "coherence", "consistency", "label_choice"]


class LLMCall(BaseModel):
    """One request/response pair with the token ids and logprobs as the backend returned them.

    Images in `messages` serialise as content hashes; the ids are never re-derived from the text.
    """

    role: Role
    purpose: Purpose
    node: str
    round: int
    model_id: str
    adapter: str | None = None
    weight_version: str = "initial"
    messages: list[ChatMessage]
    choices: list[str] | None = None
    sampling: SamplingParams
    text: str = ""
    prompt_token_ids: list[int] = Field(default_factory=list)
    completion_token_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)
    logprob_mode: LogprobMode = "raw_logprobs"
    finish_reason: FinishReason = "error"
    usage: Usage | None = None
    latency_s: float = 0.0
    queue_s: float = Field(0.0, description="time waiting for a batch slot before generation (in-process batching)")
    parsed: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def from_completion(cls, completion: Completion, **fields: Any) -> LLMCall:
        return cls(
            model_id=completion.model_id,
            adapter=completion.adapter,
            text=completion.text,
            prompt_token_ids=completion.prompt_token_ids,
            completion_token_ids=completion.completion_token_ids,
            logprobs=completion.logprobs,
            logprob_mode=completion.logprob_mode,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            latency_s=completion.latency_s,
            queue_s=completion.queue_s,
            **fields,
        )
