"""Per-row decoding for a batch: each row keeps its own sampling parameters, seed, choice set and length.

`generate` samples a whole batch with one set of warpers and the global RNG. `RowSampler` instead picks every row's
next token itself, for the project's decoding loop or inside `generate`, so a row samples the same whatever it is
batched with: transformers' warpers in `generate`'s order (top-p alone, the roles' default, is worked out on the
likeliest tokens, see `nucleus`), then `torch.multinomial` on the row's own generator, seeded like
`torch.manual_seed(seed)`.
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

# Sorting the whole vocabulary for top-p costs more per step than a small model's forward pass on a CPU; a peaked
# distribution's nucleus lies within its few likeliest tokens.
NUCLEUS_CANDIDATES = 64


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


def nucleus(
    logits: torch.Tensor, top_p: float, candidates: int = NUCLEUS_CANDIDATES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-p on each row's `candidates` likeliest tokens: their ids, their probabilities with the dropped ones zeroed,
    and whether the row's nucleus lies within them. Dropped are the least likely tokens that together hold at most
    1 - top_p, the likeliest always stays: the tokens transformers' TopPLogitsWarper drops, found without sorting the
    vocabulary."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, ids = probs.topk(min(candidates, probs.shape[-1]), dim=-1)
    ascending, ids = top.flip(-1), ids.flip(-1)
    rest = 1 - top.sum(dim=-1, keepdim=True)  # the mass outside the candidates, all of it less likely
    dropped = rest + ascending.cumsum(dim=-1) <= 1 - top_p
    dropped[..., -1] = False
    return ids, ascending.masked_fill(dropped, 0), rest.squeeze(-1) <= 1 - top_p


class RowSampler(LogitsProcessor):
    """Chooses each row's next token (greedy or sampled, inside its closed set).

    Rows with the same sampling parameters are warped together (the warpers work row by row, so this changes no
    value, and one sort of many rows is much cheaper than many sorts of one); each row then draws from its own
    generator. `choose` serves a decoding loop that drops finished rows; called as a LogitsProcessor (by `generate`,
    which keeps every row) it returns the choices as one-hot scores, so `generate` run greedy only carries them out.
    """

    def __init__(self, rows: Sequence[RowDecoding], prompt_length: int, device: torch.device) -> None:
        self._rows = rows
        self._prompt_length = prompt_length
        self._generators = [_generator(row.sampling.seed, device) for row in rows]
        groups: dict[SamplingParams, list[int]] = {}
        for index, row in enumerate(rows):
            groups.setdefault(row.sampling.model_copy(update={"seed": None, "max_tokens": 1}), []).append(index)
        self._groups = [(indices, sampling, warpers(sampling)) for sampling, indices in groups.items()]

    def choose(self, active: Sequence[int], histories: Sequence[list[int]], scores: torch.Tensor) -> torch.Tensor:
        """The next token of each row in `active` (indices of rows; `histories`, the ids each generated so far, and
        the rows of `scores` follow that order)."""
        scores = self._constrained(active, histories, scores)
        tokens = torch.empty(len(active), dtype=torch.long, device=scores.device)
        place = {row: position for position, row in enumerate(active)}
        for indices, sampling, warp in self._groups:
            present = [index for index in indices if index in place]
            if not present:
                continue
            positions = torch.tensor([place[index] for index in present], device=scores.device)
            if sampling.greedy:
                tokens[positions] = scores[positions].argmax(dim=-1)
                continue
            tokens[positions] = self._sampled(present, scores[positions], sampling, warp)
        return tokens

    def _sampled(
        self, indices: list[int], scores: torch.Tensor, sampling: SamplingParams, warp: LogitsProcessorList
    ) -> torch.Tensor:
        """One draw per row (`indices` with their `scores`), each on its own generator: from the row's top-p nucleus
        when top-p is its only filter and its `NUCLEUS_CANDIDATES` likeliest tokens hold it, else from the whole
        vocabulary through transformers' warpers."""
        tokens = torch.empty(len(indices), dtype=torch.long, device=scores.device)
        whole = list(range(len(indices)))
        if sampling.top_p < 1.0 and sampling.top_k <= 0 and not sampling.min_p:
            ids, kept, holds = nucleus(scores / sampling.temperature, sampling.top_p)
            held = holds.tolist()
            whole = [i for i in whole if not held[i]]
            for i in (i for i in range(len(indices)) if held[i]):
                tokens[i] = ids[i, torch.multinomial(kept[i], num_samples=1, generator=self._generators[indices[i]])]
        if whole:
            # The warpers used here read only the scores, not the ids so far.
            probs = torch.softmax(warp(_NO_IDS, scores[whole]), dim=-1)
            for row, i in enumerate(whole):
                tokens[i] = torch.multinomial(probs[row], num_samples=1, generator=self._generators[indices[i]])
        return tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        histories = input_ids[:, self._prompt_length :].tolist()
        tokens = self.choose(range(len(self._rows)), histories, scores)
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens), device=scores.device), tokens] = 0
        return chosen

    def _constrained(self, active: Sequence[int], histories: Sequence[list[int]], scores: torch.Tensor) -> torch.Tensor:
        """Scores with every token outside a closed-set row's allowed continuations masked out."""
        constrained = [
            (position, self._rows[row].constraint, history)
            for position, (row, history) in enumerate(zip(active, histories, strict=True))
            if self._rows[row].constraint is not None
        ]
        if not constrained:
            return scores
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for position, constraint, history in constrained:
            mask[position] = True
            mask[position, constraint.allowed(history)] = False
        return scores.masked_fill(mask, float("-inf"))


class RowLimit(StoppingCriteria):
    """Stops each row at its own token budget (`generate`'s max_new_tokens is the batch's largest)."""

    def __init__(self, budgets: Sequence[int], prompt_length: int, device: torch.device) -> None:
        self._budgets = torch.tensor(budgets, device=device)
        self._prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return input_ids.shape[1] - self._prompt_length >= self._budgets


_NO_IDS = torch.empty(0, dtype=torch.long)


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator in the state `torch.manual_seed(seed)` leaves; None (the global RNG) for an unseeded row."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)
