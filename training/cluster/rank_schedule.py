"""Which rows each rank of a policy group takes, in which order: the same kind of row (with an image or text only)
at the same position on every rank.

ZeRO reduces gradients bucket by bucket in the order backward produces them, so every rank's backward must produce
the same gradients in the same order. A VLM with a trainable vision tower breaks that when one rank's micro-batch
has an image and another's has not: only the first has vision-tower gradients, and the ranks' reductions no longer
pair up (a gloo size mismatch, or, with equal sizes, silently wrong sums). Dealing rows kind by kind, with padding
rows of the same kind where a rank runs short (an image padding row runs the vision tower with loss weight 0),
keeps every position's kind equal on all ranks; the ranks' shuffles then keep it so, as they share one seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class Padding(Enum):
    TEXT = "text"  # two tokens, no action
    IMAGE = "image"  # an image row's inputs with no action and loss weight 0


Slot = int | Padding  # a row's index, or a padding row


def deal(has_image: Sequence[bool], lengths: Sequence[int], ranks: int, micro_batch: int = 1) -> list[list[Slot]]:
    """Rows per rank: image rows first, then text rows, each kind dealt longest first round-robin (even work) and
    padded so that every rank holds the same number of each kind, a multiple of `micro_batch`."""
    plan: list[list[Slot]] = [[] for _ in range(ranks)]
    for image, padding in ((True, Padding.IMAGE), (False, Padding.TEXT)):
        rows = sorted((i for i, flag in enumerate(has_image) if flag == image), key=lambda i: -lengths[i])
        per_rank = -(-len(rows) // (ranks * micro_batch)) * micro_batch
        for rank in range(ranks):
            mine: list[Slot] = list(rows[rank::ranks])
            plan[rank] += mine + [padding] * (per_rank - len(mine))
    return plan


def fill(plan: list[list[Slot]], rows_per_rank: int) -> list[list[Slot]]:
    """Every rank's rows made up to `rows_per_rank` with text padding (DeepSpeed fixes rows per optimizer step)."""
    if plan and len(plan[0]) > rows_per_rank:
        raise ValueError(f"{len(plan[0])} rows per rank, more than the group's fixed {rows_per_rank}")
    return [slots + [Padding.TEXT] * (rows_per_rank - len(slots)) for slots in plan]
