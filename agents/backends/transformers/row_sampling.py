"""Per-row decoding for batched `generate`: each row keeps its own sampling parameters, seed, choice set and length.

`generate` samples a whole batch with one set of warpers and the global RNG. `RowSampler` instead picks every row's
next token itself and hands `generate` a one-hot score row, so `generate` (run greedy) only carries out the choice.
A row samples exactly as an unbatched seeded call would: the same warpers in the same order, then
`torch.multinomial` on a generator seeded like `torch.manual_seed(seed)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    StoppingCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from emo_r3.agents.backends.transformers.choice_constraint import ChoiceTrie
from emo_r3.agents.chat_model import SamplingParams


@dataclass(frozen=True)
class RowDecoding:
    """How one row of a batch decodes: its sampling parameters, closed set (if any) and token budget."""

    sampling: SamplingParams
    constraint: ChoiceTrie | None
    max_new_tokens: int


def warpers(sampling: SamplingParams) -> LogitsProcessorList:
    """transformers' sampling warpers for these parameters, in the order `generate` applies them (none if greedy)."""
    steps = LogitsProcessorList()
    if sampling.greedy:
        return steps
    if sampling.temperature != 1.0:
        steps.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        steps.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        steps.append(TopPLogitsWarper(top_p=sampling.top_p))
    if sampling.min_p:
        steps.append(MinPLogitsWarper(min_p=sampling.min_p))
    return steps


class RowSampler(LogitsProcessor):
    """Chooses each row's next token (greedy or sampled, inside its closed set) and returns it as one-hot scores.

    Rows with the same sampling parameters are warped together (the warpers work row by row, so this changes no
    value, and one sort of many rows is much cheaper than many sorts of one); each row then draws from its own
    generator.
    """

    def __init__(self, rows: Sequence[RowDecoding], prompt_length: int, device: torch.device) -> None:
        self._rows = rows
        self._prompt_length = prompt_length
        self._generators = [_generator(row.sampling.seed, device) for row in rows]
        groups: dict[SamplingParams, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row.sampling.model_copy(update={"seed": None, "max_tokens": 1}), []).append(index)
        # Index tensors made once here, not at every decoding step.
        self._groups = [
            (indices, torch.tensor(indices, device=device), sampling, warpers(sampling))
            for sampling, indices in groups.items()
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self._constrained(input_ids, scores)
        chosen = torch.full_like(scores, float("-inf"))
        for indices, rows, sampling, warp in self._groups:
            if sampling.greedy:
                tokens = scores[rows].argmax(dim=-1)
            else:
                probs = torch.softmax(warp(input_ids[rows], scores[rows]), dim=-1)
                draws = [
                    torch.multinomial(probs[i : i + 1], num_samples=1, generator=self._generators[index])
                    for i, index in enumerate(indices)
                ]
                tokens = torch.cat(draws).squeeze(1)
            chosen[rows, tokens] = 0
        return chosen

    def _constrained(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores with every token outside a closed-set row's allowed continuations masked out."""
        constrained = [(index, row.constraint) for index, row in enumerate(self._rows) if row.constraint is not None]
        if not constrained:
            return scores
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for index, constraint in constrained:
            mask[index] = True
            mask[index, constraint.allowed(input_ids[index, self._prompt_length :].tolist())] = False
        return scores.masked_fill(mask, float("-inf"))


class RowLimit(StoppingCriteria):
    """Stops each row at its own token budget (`generate`'s max_new_tokens is the batch's largest)."""

    def __init__(self, budgets: Sequence[int], prompt_length: int, device: torch.device) -> None:
        self._budgets = torch.tensor(budgets, device=device)
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return input_ids.shape[1] - self._prompt_length >= self._budgets


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator in the state `torch.manual_seed(seed)` leaves; None (the global RNG) for an unseeded row."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)
