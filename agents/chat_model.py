"""The one interface every node calls: a chat request with images and explicit sampling in, token-exact output out."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from emo_r3.agents.images import PreparedImage

LogprobMode = Literal["raw_logprobs", "processed_logprobs"]
FinishReason = Literal["stop", "length", "error"]


class TextPart(BaseModel, frozen=True):
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel, frozen=True):
    """An image in a message; records and traces carry it by content hash only."""

    type: Literal["image"] = "image"
    image: PreparedImage


class ChatMessage(BaseModel, frozen=True):
    role: Literal["system", "user", "assistant"]
    content: tuple[TextPart | ImagePart, ...]

    @classmethod
    def user(cls, text: str, images: tuple[PreparedImage, ...] = ()) -> ChatMessage:
        """A user turn with its images first, then the text (the order vision-language templates expect)."""
        return cls(role="user", content=(*(ImagePart(image=i) for i in images), TextPart(text=text)))

    @property
    def images(self) -> list[PreparedImage]:
        return [part.image for part in self.content if isinstance(part, ImagePart)]

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class SamplingParams(BaseModel, frozen=True):
    """Every knob sent explicitly: servers fill omitted ones from the model's generation_config, not from us."""

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, description="-1 = no top-k")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1, description="completion length cap; ends endless repetition")
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Usage(BaseModel, frozen=True):
    prompt_tokens: int
    completion_tokens: int


class Completion(BaseModel, frozen=True):
    """What a backend returns: the text and the exact token ids and logprobs the model produced."""

    text: str
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float] = Field(description="logprob of each sampled completion token, 1:1 with the ids")
    logprob_mode: LogprobMode = "raw_logprobs"
    finish_reason: FinishReason
    usage: Usage
    latency_s: float = Field(description="time generating (for a batched call: its batch's generation)")
    queue_s: float = Field(0.0, description="time waiting for a batch slot before generation started")
    model_id: str
    adapter: str | None = Field(None, description="the LoRA adapter that served the call, if any")


class ModelCallError(RuntimeError):
    """A backend could not produce a completion (server down, out of memory, bad request)."""


@runtime_checkable
class ChatModel(Protocol):
    """An LLM endpoint. `choices`, when given, constrains the answer to exactly one of those strings; the options
    then bound the answer's length, so a backend must let the longest option finish whatever `max_tokens` says."""

    @property
    def model_id(self) -> str: ...

    @property
    def adapter(self) -> str | None:
        """The LoRA adapter requests go to (None = the base model)."""
        ...

    @property
    def supports_images(self) -> bool: ...

    async def chat(
        self,
        messages: list[ChatMessage],
        sampling: SamplingParams,
        *,
        choices: list[str] | None = None,
    ) -> Completion: ...

    async def check_ready(self) -> None:
        """Raise ModelCallError, saying what to start, if the model cannot serve calls now."""
        ...
