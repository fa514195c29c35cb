"""One batch of requests to one model and adapter: exact prompt ids, sampled ids, raw logprobs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from emo_r3.agents.backends.transformers.batch_inputs import TOKEN_KEYS, collate
from emo_r3.agents.backends.transformers.decode_loop import decode_rows, decodes_stepwise
from emo_r3.agents.backends.transformers.row_sampling import RowDecoding, RowLimit, RowSampler

if TYPE_CHECKING:  # loading.py builds each model's batcher on this module
    from emo_r3.agents.backends.transformers.loading import LoadedModel


@dataclass(frozen=True)
class GenerationRequest:
    """One encoded prompt (batch dim 1) and how to decode it, for the LoRA adapter `adapter` (None = base model)."""

    inputs: dict[str, torch.Tensor]
    decoding: RowDecoding
    adapter: str | None

    @property
    def prompt_ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests that may share a `generate`: one adapter, the same kind of inputs (with or without images), and
        closed-set answers (a few tokens) kept apart from free text (hundreds)."""
        images = frozenset(self.inputs) - TOKEN_KEYS
        return self.adapter, images, self.decoding.constraint is not None


@dataclass(frozen=True)
class GeneratedRow:
    """A request's completion: ids up to and including the first EOS (or its budget), the raw logprob of each."""

    completion_ids: list[int]
    logprobs: list[float]
    latency_s: float


def generate_rows(loaded: LoadedModel, requests: Sequence[GenerationRequest]) -> list[GeneratedRow]:
    """Run `requests` (one batch key) as one batch under the model's lock; rows come back in request order.
    Requests with the same prompt run its prefill once, and finished rows leave the batch (see `decode_loop`)."""
    start = time.perf_counter()
    encoded = [r.inputs for r in requests]
    batch = collate(encoded, pad_token_id=loaded.eos_token_ids[0])
    rows = [r.decoding for r in requests]
    with loaded.lock, selected_adapter(loaded.model, requests[0].adapter), torch.inference_mode(), loaded.compute():
        if decodes_stepwise(loaded.model_type):
            completions = decode_rows(loaded.model, batch, encoded, rows, loaded.eos_token_ids)
        else:
            completions = _generate(loaded, batch, rows)
    latency = time.perf_counter() - start
    return [GeneratedRow(ids, logprobs, latency_s=latency) for ids, logprobs in completions]


def _generate(
    loaded: LoadedModel, batch: dict[str, torch.Tensor], rows: Sequence[RowDecoding]
) -> list[tuple[list[int], list[float]]]:
    """The batch through transformers' `generate`, every row sampled by `RowSampler` and stopped at its budget."""
    prompt_length = batch["input_ids"].shape[1]
    budgets = [row.max_new_tokens for row in rows]
    device = loaded.model.device
    output = loaded.model.generate(
        **batch,
        do_sample=False,  # RowSampler has already chosen each row's token; greedy picks it
        temperature=None, top_p=None, top_k=None, min_p=None,
        eos_token_id=loaded.eos_token_ids, pad_token_id=loaded.eos_token_ids[0],
        max_new_tokens=max(budgets),
        logits_processor=LogitsProcessorList([RowSampler(rows, prompt_length, device)]),
        stopping_criteria=StoppingCriteriaList([RowLimit(budgets, prompt_length, device)]),
        return_dict_in_generate=True, output_logits=True,
    )  # fmt: skip
    return [
        _row_tokens(output, index, prompt_length, budget, loaded.eos_token_ids) for index, budget in enumerate(budgets)
    ]


@contextlib.contextmanager
def selected_adapter(model: Any, adapter: str | None) -> Iterator[None]:
    """Activate a LoRA adapter, or switch adapters off for the base model (the caller holds the model's lock)."""
    if adapter is not None:
        model.set_adapter(adapter)
        yield
    elif hasattr(model, "disable_adapter"):  # a peft model asked for its base weights
        with model.disable_adapter():
            yield
    else:
        yield


def _row_tokens(
    output: Any, index: int, prompt_length: int, budget: int, eos_token_ids: list[int]
) -> tuple[list[int], list[float]]:
    """Row `index`'s generated ids up to its budget and first EOS, with the raw (pre-temperature) logprob of each."""
    generated: list[int] = output.sequences[index, prompt_length : prompt_length + budget].tolist()
    ids: list[int] = []
    logprobs: list[float] = []
    for step, token in enumerate(generated):
        step_logprobs = torch.log_softmax(output.logits[step][index].float(), dim=-1)
        ids.append(token)
        logprobs.append(float(step_logprobs[token]))
        if token in eos_token_ids:
            break
    return ids, logprobs
