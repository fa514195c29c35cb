"""In-process ChatModel on transformers: exact prompt/completion ids and raw logprobs, closed-set decoding by score."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from emo_r3.agents.backends.transformers.choice_constraint import ChoiceTrie
from emo_r3.agents.backends.transformers.loading import LoadedModel, load_hf_model
from emo_r3.agents.chat_model import ChatMessage, Completion, ImagePart, ModelCallError, SamplingParams, Usage


class TransformersChatModel:
    """A ChatModel that runs a local HF folder (causal LM or image-text model) in this process.

    Calls are serialised on the model's lock: a model instance is not safe to run from two threads at once, and on
    a small machine one generation at a time is also the fastest. When the model is a peft model with several LoRA
    adapters (the trainer's `lora` mode), `adapter` picks the one this ChatModel speaks with; None = the base model.
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
    ) -> TransformersChatModel:
        path = Path(model_dir)
        return cls(load_hf_model(path, device=device, dtype=dtype), model_id=model_id or path.name)

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
        return await asyncio.to_thread(self.chat_sync, messages, sampling, choices)

    def chat_sync(
        self, messages: list[ChatMessage], sampling: SamplingParams, choices: list[str] | None = None
    ) -> Completion:
        start = time.perf_counter()
        inputs = self.encode(messages)
        prompt_ids: list[int] = inputs["input_ids"][0].tolist()
        constraint = ChoiceTrie(self._choice_sequences(choices), self._loaded.eos_token_ids) if choices else None
        try:
            with self._loaded.lock, self._selected_adapter(), torch.inference_mode(), self._loaded.compute():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                output = self._loaded.model.generate(
                    **inputs,
                    **_generation_kwargs(sampling, self._loaded.eos_token_ids),
                    max_new_tokens=constraint.max_length if constraint else sampling.max_tokens,
                    prefix_allowed_tokens_fn=constraint.allowed_fn(len(prompt_ids)) if constraint else None,
                    return_dict_in_generate=True,
                    output_logits=True,
                )
        except (RuntimeError, ValueError) as error:
            raise ModelCallError(f"{self._model_id}: generation failed: {error}") from error
        completion_ids, logprobs = _sampled_tokens(output, len(prompt_ids), self._loaded.eos_token_ids)
        finished = bool(completion_ids) and completion_ids[-1] in self._loaded.eos_token_ids
        return Completion(
            text=self._loaded.tokenizer.decode(completion_ids, skip_special_tokens=True),
            prompt_token_ids=prompt_ids,
            completion_token_ids=completion_ids,
            logprobs=logprobs,
            logprob_mode="raw_logprobs",
            finish_reason="stop" if finished else "length",
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(completion_ids)),
            latency_s=time.perf_counter() - start,
            model_id=self._model_id,
            adapter=self._adapter,
        )

    @contextlib.contextmanager
    def _selected_adapter(self) -> Iterator[None]:
        """Activate this ChatModel's LoRA adapter, or switch adapters off for the base model (caller holds the lock)."""
        model = self._loaded.model
        if self._adapter is not None:
            model.set_adapter(self._adapter)
            yield
        elif hasattr(model, "disable_adapter"):  # a peft model asked for its base weights
            with model.disable_adapter():
                yield
        else:
            yield

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


def _generation_kwargs(sampling: SamplingParams, eos_token_ids: list[int]) -> dict[str, Any]:
    common: dict[str, Any] = {"eos_token_id": eos_token_ids, "pad_token_id": eos_token_ids[0]}
    if sampling.greedy:
        return {**common, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {
        **common,
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else None,
        "min_p": sampling.min_p or None,
    }


def _sampled_tokens(output: Any, prompt_length: int, eos_token_ids: list[int]) -> tuple[list[int], list[float]]:
    """The generated ids up to and including the first EOS, with the raw (pre-temperature) logprob of each."""
    generated: list[int] = output.sequences[0, prompt_length:].tolist()
    ids: list[int] = []
    logprobs: list[float] = []
    for step, token in enumerate(generated):
        step_logprobs = torch.log_softmax(output.logits[step][0].float(), dim=-1)
        ids.append(token)
        logprobs.append(float(step_logprobs[token]))
        if token in eos_token_ids:
            break
    return ids, logprobs
