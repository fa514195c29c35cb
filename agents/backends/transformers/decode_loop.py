"""Decoding a batch one step at a time, dropping each row from the batch as soon as it finishes.

`generate` keeps every row until the longest is done, so a batch whose calls stop after 7 and 48 tokens pays 48
steps for all of them. Here each step runs only the rows still going: a finished row's cache is dropped. It needs
positions that follow the tokens (a token's position is the count of real tokens before it); models whose positions
come from the image grid (Qwen2-VL) keep their state inside the model and decode with `generate` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from emo_r3.agents.backends.transformers.row_sampling import RowDecoding, RowSampler
from emo_r3.agents.backends.transformers.shared_prefill import prompt_owners, shared_prefill, token_positions

GRID_POSITION_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})


def decodes_stepwise(model_type: str) -> bool:
    """Whether `decode_rows` can run this model (its positions follow its tokens)."""
    return model_type not in GRID_POSITION_MODEL_TYPES


def decode_rows(
    model: Any,
    batch: dict[str, torch.Tensor],
    encoded: Sequence[dict[str, torch.Tensor]],
    rows: Sequence[RowDecoding],
    eos_token_ids: Sequence[int],
) -> list[tuple[list[int], list[float]]]:
    """Each row's generated ids (up to its first EOS or its budget) and the raw logprob of each, for `batch` (the
    left-padded `encoded` prompts); the caller holds the model's lock and the no-grad context."""
    sampler = RowSampler(rows, batch["input_ids"].shape[1], model.device)
    prefilled = shared_prefill(model, batch, prompt_owners(encoded))
    # Sampled and scored in float32 whatever the compute dtype, as `generate` does.
    logits, cache, mask = prefilled.logits.float(), prefilled.cache, prefilled.mask
    generated: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    active = list(range(len(rows)))
    while True:
        raw_logprobs = torch.log_softmax(logits, dim=-1)
        tokens = sampler.choose(active, [generated[row] for row in active], logits)
        chosen = raw_logprobs.gather(1, tokens[:, None]).squeeze(1)
        going = []
        for position, (row, token, logprob) in enumerate(zip(active, tokens.tolist(), chosen.tolist(), strict=True)):
            generated[row].append(token)
            logprobs[row].append(logprob)
            if token not in eos_token_ids and len(generated[row]) < rows[row].max_new_tokens:
                going.append(position)
        if not going:
            return list(zip(generated, logprobs, strict=True))
        if len(going) < len(active):
            kept = torch.tensor(going, device=model.device)
            cache.batch_select_indices(kept)
            mask, tokens, active = mask[kept], tokens[kept], [active[p] for p in going]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        step = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=token_positions(mask)[:, -1:],
            past_key_values=cache, use_cache=True,
        )  # fmt: skip
        logits = step.logits[:, -1].float()
