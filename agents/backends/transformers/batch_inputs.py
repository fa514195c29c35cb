"""One batch from prompts encoded one by one: token tensors left-padded, image tensors stacked.

Each prompt is encoded alone (so its ids are exactly those of an unbatched call) and only then put in a batch. Left
padding lines every prompt up to end at the same column, where generation starts for all rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Processor outputs laid out one entry per prompt token; everything else is image data.
TOKEN_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"})


def collate(encoded: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch single-prompt encodings: token tensors left-padded (pad id, mask 0), image tensors concatenated on dim 0
    after zero-padding their other dims (Idefics3 stacks a varying number of image crops per prompt)."""
    keys = encoded[0].keys()
    if any(item.keys() != keys for item in encoded):
        raise ValueError("prompts in one batch must carry the same inputs (group them by image count)")
    length = max(item["input_ids"].shape[1] for item in encoded)
    batch = {}
    for key in keys:
        tensors = [item[key] for item in encoded]
        if key in TOKEN_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            batch[key] = torch.cat([F.pad(t, (length - t.shape[1], 0), value=fill) for t in tensors])
        else:
            batch[key] = torch.cat(_padded_to_common_shape(tensors))
    return batch


def _padded_to_common_shape(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad every dim but the first to the largest size among `tensors` (zeros are what processors pad with)."""
    shape = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors), strict=True)]
    padded = []
    for tensor in tensors:
        # F.pad takes (before, after) pairs from the last dim backwards
        sizes = zip(reversed(tensor.shape[1:]), reversed(shape), strict=True)
        widths = [width for size, target in sizes for width in (0, target - size)]
        padded.append(F.pad(tensor, widths) if any(widths) else tensor)
    return padded
