"""Attention that reads grouped key/value heads in place on CPU, instead of copying them out for each query head.

With grouped-query attention (SmolLM2: 9 query heads on 3 key/value heads) transformers' sdpa copies every
key/value head once per query head it serves whenever a mask is passed, which every padded batch does: at each
decoding step that rewrites the whole cache three times over. torch's own grouped path (`enable_gqa`) takes the
mask on CPU and returns the same numbers; `benchmarks/grouped_attention.py` times a step of 8 padded SmolLM2 rows
1.2-1.5x faster with it on a 2-core CPU. On CUDA a mask with `enable_gqa` falls back to sdpa's slowest kernel, so
there transformers' sdpa is kept as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# The attention implementation `use_grouped_sdpa` registers with transformers.
GROUPED_SDPA = "grouped_sdpa"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa, except that a masked attention on CPU reads each key/value head for its whole group of
    query heads (`enable_gqa`) where sdpa would repeat it."""
    if not _reads_groups_in_place(module, query, attention_mask, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=kwargs.get("dropout", 0.0),
        scale=kwargs.get("scaling"), enable_gqa=True,
    )  # fmt: skip
    return output.transpose(1, 2).contiguous(), None


def _reads_groups_in_place(
    module: torch.nn.Module, query: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict[str, Any]
) -> bool:
    # Without a mask sdpa already takes the grouped path; a position bias or a paged cache needs sdpa's handling.
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = kwargs.get("position_bias") is None and kwargs.get("cache") is None
    return grouped and plain and attention_mask is not None and query.device.type == "cpu"


def use_grouped_sdpa(model: torch.nn.Module) -> None:
    """Switch `model` (and its sub-models) to `grouped_sdpa_attention`, with sdpa's masks."""
    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)
