"""A ChatModel that answers from a Python function, with byte-level token ids and no model at all.

Like httpx.MockTransport: for dry runs of a graph, orchestration benchmarks (zero model latency) and fault
injection in tests (malformed answers, errors). It is never a stand-in for a real model in a claim about models.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from emo_r3.agents.chat_model import ChatMessage, Completion, SamplingParams, Usage

Responder = Callable[[list[ChatMessage], SamplingParams, list[str] | None], str | Awaitable[str]]


class ScriptedChatModel:
    def __init__(self, respond: Responder, *, model_id: str = "scripted", supports_images: bool = True) -> None:
        self._respond = respond
        self._model_id = model_id
        self._supports_images = supports_images

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter(self) -> str | None:
        return None

    @property
    def supports_images(self) -> bool:
        return self._supports_images

    async def check_ready(self) -> None:
        """In-process: loaded means ready."""

    async def chat(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, choices: list[str] | None = None
    ) -> Completion:
        start = time.perf_counter()
        answer = self._respond(messages, sampling, choices)
        if isinstance(answer, Awaitable):
            answer = await answer
        prompt_ids = list("".join(m.text for m in messages).encode())
        ids = list(answer.encode())
        cap = len(ids) if choices else sampling.max_tokens  # a closed-set answer is bounded by its options
        truncated = len(ids) > cap
        ids = ids[:cap]
        return Completion(
            text=bytes(ids).decode(errors="ignore"),
            prompt_token_ids=prompt_ids,
            completion_token_ids=ids,
            logprobs=[0.0] * len(ids),
            finish_reason="length" if truncated else "stop",
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(ids)),
            latency_s=time.perf_counter() - start,
            model_id=self._model_id,
        )
