"""In-process ChatModel on transformers: exact prompt/completion ids and raw logprobs, closed-set decoding by score."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import torch

from emo_r3.agents.backends.transformers.batching import Batched, BatchSettings
from emo_r3.agents.backends.transformers.choice_constraint import ChoiceTrie
from emo_r3.agents.backends.transformers.generation import GeneratedRow, GenerationRequest
from emo_r3.agents.backends.transformers.loading import LoadedModel, load_hf_model
from emo_r3.agents.backends.transformers.row_sampling import RowDecoding
from emo_r3.agents.chat_model import ChatMessage, Completion, ImagePart, ModelCallError, SamplingParams, Usage


class TransformersChatModel:
    """A ChatModel that runs a local HF folder (causal LM or image-text model) in this process.

    Concurrent calls are batched: every ChatModel on one loaded model submits to that model's batcher, which runs
    calls that can share a forward pass together (see `LoadedModel.batching`). When the model is a peft model with
    several LoRA adapters (the trainer's `lora` mode), `adapter` picks the one this ChatModel speaks with; None =
    the base model.
    """

    def __init__(self, loaded: LoadedModel, *, model_id: str, adapter: str | None = None) -> None:
        self._loaded = loaded
        self._model_id = model_id
        self._adapter = adapter

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        *,
        model_id: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        batching: BatchSettings | None = None,
    ) -> TransformersChatModel:
        path = Path(model_dir)
        loaded = load_hf_model(path, device=device, dtype=dtype, batching=batching)
        return cls(loaded, model_id=model_id or path.name)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def loaded(self) -> LoadedModel:
        return self._loaded

    @property
    def supports_images(self) -> bool:
        return self._loaded.supports_images

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer

    async def check_ready(self) -> None:
        """In-process: loaded means ready."""

    async def chat(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, choices: list[str] | None = None
    ) -> Completion:
        request = await asyncio.to_thread(self.request, messages, sampling, choices)
        try:
            # Awaited directly, so a cancelled caller cancels its queued call too.
            batched = await asyncio.wrap_future(self._loaded.batcher.submit(request))
        except (RuntimeError, ValueError) as error:
            raise self._failed(error) from error
        return self._completion(request, batched)

    def chat_sync(
        self, messages: list[ChatMessage], sampling: SamplingParams, choices: list[str] | None = None
    ) -> Completion:
        request = self.request(messages, sampling, choices)
        try:
            batched = self._loaded.batcher.submit(request).result()
        except (RuntimeError, ValueError) as error:
            raise self._failed(error) from error
        return self._completion(request, batched)

    def request(
        self, messages: list[ChatMessage], sampling: SamplingParams, choices: list[str] | None = None
    ) -> GenerationRequest:
        """The call encoded for the batcher: prompt tensors, decoding settings, adapter."""
        constraint = ChoiceTrie(self._choice_sequences(choices), self._loaded.eos_token_ids) if choices else None
        budget = constraint.max_length if constraint else sampling.max_tokens
        return GenerationRequest(self.encode(messages), RowDecoding(sampling, constraint, budget), self._adapter)

    def _failed(self, error: Exception) -> ModelCallError:
        return ModelCallError(f"{self._model_id}: generation failed: {error}")

    def _completion(self, request: GenerationRequest, batched: Batched[GeneratedRow]) -> Completion:
        row = batched.result
        finished = bool(row.completion_ids) and row.completion_ids[-1] in self._loaded.eos_token_ids
        prompt_ids = request.prompt_ids
        return Completion(
            text=self._loaded.tokenizer.decode(row.completion_ids, skip_special_tokens=True),
            prompt_token_ids=prompt_ids,
            completion_token_ids=row.completion_ids,
            logprobs=row.logprobs,
            logprob_mode="raw_logprobs",
            finish_reason="stop" if finished else "length",
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(row.completion_ids)),
            latency_s=row.latency_s,
            queue_s=batched.queue_s,
            model_id=self._model_id,
            adapter=self._adapter,
        )

    def encode(self, messages: list[ChatMessage]) -> dict[str, torch.Tensor]:
        """Render the chat template once and tokenize it, with pixel values for every image in the messages."""
        images = [part.image.to_pil() for m in messages for part in m.content if isinstance(part, ImagePart)]
        if images and not self.supports_images:
            raise ModelCallError(f"{self._model_id} is a text-only model and cannot take images")
        loaded = self._loaded
        if loaded.processor is not None:
            prompt = loaded.processor.apply_chat_template(
                [_hf_message(m, structured=True) for m in messages], add_generation_prompt=True, tokenize=False
            )
            encoded = loaded.processor(text=[prompt], images=[images] if images else None, return_tensors="pt")
        else:
            prompt = loaded.tokenizer.apply_chat_template(
                [_hf_message(m, structured=False) for m in messages], add_generation_prompt=True, tokenize=False
            )
            encoded = loaded.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        return {k: v.to(loaded.model.device) for k, v in encoded.items() if isinstance(v, torch.Tensor)}

    def _choice_sequences(self, choices: list[str]) -> list[list[int]]:
        # Both spellings a BPE vocabulary may use for a word at the start of an answer: "awe" and " awe".
        tokenizer = self._loaded.tokenizer
        sequences = {
            tuple(tokenizer.encode(variant, add_special_tokens=False))
            for choice in choices
            for variant in (choice, " " + choice)
        }
        return [list(s) for s in sequences if s]


def _hf_message(message: ChatMessage, *, structured: bool) -> dict[str, Any]:
    if not structured:
        return {"role": message.role, "content": message.text}
    parts = [
        {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part.text}
        for part in message.content
    ]
    return {"role": message.role, "content": parts}
