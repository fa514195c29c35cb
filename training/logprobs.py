"""Trainer-side log-probabilities of recorded completions: padding-free packed forwards and a chunked LM head.

Only completion positions go through the LM head, a chunk at a time (never the full-vocabulary logits of a whole
batch), and each chunk's logits are recomputed in the backward pass instead of being kept. Rows are packed into
one sequence with positions restarting per row; transformers turns restarting `position_ids` into a block-causal
mask, so packed rows never attend to each other. Rows with images run one per forward with their pixel values.
M-RoPE models (Qwen2-VL, Qwen2.5-VL) pack text rows too: without images their 3-D positions are the 1-D ones.
With `use_packed_sdpa` the attention skips that mask and runs row by row (`packed_sdpa_attention`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, ProcessorMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from emo_r3.agents.backends.transformers.grouped_attention import grouped_sdpa_attention
from emo_r3.agents.backends.transformers.loading import LoadedModel
from emo_r3.agents.images import PreparedImage
from emo_r3.training.rows import TrainingRow

# Families whose rotary positions are 3-D (M-RoPE): text rows take their 1-D positions on all three axes, image
# rows the positions their model computes from the image grid.
MROPE_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})
# The attention implementation `use_packed_sdpa` registers with transformers.
PACKED_SDPA = "packed_sdpa"


def _chunk_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """log π(y_t | h_t) = z_t[y_t] − logsumexp(z_t), z_t = head(h_t), over (N, H) hidden states in N/chunk chunks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, h, head, y, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h, head, y))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay active), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    packed_lengths: Sequence[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa, with the rows of a packed (1, H, T, D) sequence attended one at a time, each causally.

    Equal to sdpa under the block-causal mask, for Σ ℓ_i²/2 work instead of T²: given a dense T×T mask, sdpa can
    neither take its flash kernel nor skip the blocks between rows, and packing costs more attention than it saves.
    Without `packed_lengths` (one row, padded batches, generation) this is `grouped_sdpa_attention`, mask included.
    """
    if packed_lengths is None:
        return grouped_sdpa_attention(module, query, key, value, attention_mask, **kwargs)
    rows = zip(*(tensor.split(list(packed_lengths), dim=2) for tensor in (query, key, value)), strict=True)
    outputs = [sdpa_attention_forward(module, q, k, v, None, **kwargs)[0] for q, k, v in rows]
    return torch.cat(outputs, dim=1), None


def use_packed_sdpa(model: torch.nn.Module) -> None:
    """Switch `model` to `packed_sdpa_attention`; masks stay sdpa's, so padded batches and generation are unchanged."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    base_model(model).set_attn_implementation(PACKED_SDPA)


def image_inputs(processor: ProcessorMixin | None, images: Sequence[PreparedImage]) -> dict[str, torch.Tensor]:
    """Pixel inputs for one row's images (CPU tensors), from the image processor generation used: same settings,
    same pixels, so the image tokens in the recorded prompt ids get the features they were generated with."""
    if not images:
        return {}
    if processor is None:
        raise ValueError(f"a model without an image processor cannot take a row with {len(images)} images")
    processed = processor.image_processor(images=[[image.to_pil() for image in images]], return_tensors="pt")
    return {k: v for k, v in processed.items() if isinstance(v, torch.Tensor)}


@dataclass
class MicroBatch:
    """Rows forwarded together: several packed text rows, or one row with images."""

    rows: list[TrainingRow]

    @property
    def num_tokens(self) -> int:
        return sum(row.num_tokens for row in self.rows)


def micro_batches(rows: Sequence[TrainingRow], max_tokens: int, *, pack: bool = True) -> Iterator[MicroBatch]:
    """Greedy packing in row order: text rows share a micro-batch up to `max_tokens`; image rows go alone."""
    current: list[TrainingRow] = []
    for row in rows:
        alone = row.images or not pack
        if current and (alone or sum(r.num_tokens for r in current) + row.num_tokens > max_tokens):
            yield MicroBatch(current)
            current = []
        if alone:
            yield MicroBatch([row])
        else:
            current.append(row)
    if current:
        yield MicroBatch(current)


def _packed_positions(rows: Sequence[TrainingRow]) -> tuple[list[int], list[int], list[int]]:
    """Concatenated ids, restarting positions, and the index of the hidden state that predicts each completion id."""
    ids: list[int] = []
    positions: list[int] = []
    predictors: list[int] = []
    for row in rows:
        start, prompt_len = len(ids), len(row.prompt_token_ids)
        ids.extend(row.input_ids)
        positions.extend(range(row.num_tokens))
        predictors.extend(range(start + prompt_len - 1, start + row.num_tokens - 1))
    return ids, positions, predictors


def _position_ids(loaded: LoadedModel, positions: list[int], device: torch.device) -> torch.Tensor:
    """Restarting positions of packed text rows: (1, T), or (4, 1, T) for M-RoPE.

    A text-only row's M-RoPE position is (p, p, p) on the (time, height, width) axes. Transformers derives the packed
    mask only from a fourth, leading row of 1-D text positions; given (3, 1, T) it would build one causal mask over
    the whole pack and let rows attend to each other.
    """
    position_ids = torch.tensor([positions], device=device)
    return position_ids.expand(4, 1, -1) if loaded.model_type in MROPE_MODEL_TYPES else position_ids


def _model_kwargs(loaded: LoadedModel, batch: MicroBatch, input_ids: torch.Tensor, positions: list[int]) -> dict:
    # No KV cache: with one, transformers would not derive the packed (block-causal) mask from the positions.
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    if not batch.rows[0].images:
        kwargs["position_ids"] = _position_ids(loaded, positions, input_ids.device)
        if len(batch.rows) > 1:  # read by `packed_sdpa_attention`, ignored by the other implementations
            kwargs["packed_lengths"] = [row.num_tokens for row in batch.rows]
        return kwargs
    if loaded.model_type in MROPE_MODEL_TYPES:
        # M-RoPE positions of image tokens depend on the image grid; the model derives them for an unpacked row.
        image_token_id = base_model(loaded.model).config.image_token_id
        kwargs["mm_token_type_ids"] = (input_ids == image_token_id).int()
        kwargs["attention_mask"] = torch.ones_like(input_ids)
    device = input_ids.device
    kwargs.update({k: v.to(device) for k, v in image_inputs(loaded.processor, batch.rows[0].images).items()})
    return kwargs


def micro_batch_logprobs(loaded: LoadedModel, batch: MicroBatch, *, chunk_size: int = 1024) -> list[torch.Tensor]:
    """The trainer's logprob of every completion token of every row in `batch`, one 1-D tensor per row."""
    ids, positions, predictors = _packed_positions(batch.rows)
    if len(batch.rows) > 1 and any(row.images for row in batch.rows):
        raise ValueError("rows with images take one forward each; build micro-batches with `micro_batches`")
    device = loaded.model.device
    input_ids = torch.tensor([ids], device=device)
    model = base_model(loaded.model)
    index = torch.tensor(predictors, device=device)
    targets = input_ids[0, index + 1]
    with loaded.compute():
        hidden = model.model(**_model_kwargs(loaded, batch, input_ids, positions)).last_hidden_state[0]
        logprobs = chunked_token_logprobs(hidden[index], model.get_output_embeddings(), targets, chunk_size)
    return list(logprobs.split([len(row.completion_token_ids) for row in batch.rows]))
