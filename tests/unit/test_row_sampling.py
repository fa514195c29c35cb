"""Row sampling: top-p worked out on the likeliest tokens keeps what transformers' TopPLogitsWarper keeps, and a
seeded row draws the same token whatever rows it is batched with."""

from __future__ import annotations

import pytest
import torch
from transformers import TopPLogitsWarper

from emo_r3.agents.backends.transformers.row_sampling import RowDecoding, RowSampler, nucleus
from emo_r3.agents.chat_model import SamplingParams


def peaked_logits(rows: int, vocab: int = 5000, spread: float = 6.0, seed: int = 0) -> torch.Tensor:
    """Logits of a confident model: a few tokens far above the rest."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * spread


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.99])
def test_the_nucleus_is_the_set_transformers_keeps(top_p: float) -> None:
    logits = peaked_logits(32)
    ids, kept, holds = nucleus(logits, top_p)
    reference = torch.isfinite(TopPLogitsWarper(top_p)(torch.empty(0), logits))
    assert holds.any()
    for row in holds.nonzero().flatten().tolist():
        ours = set(ids[row][kept[row] > 0].tolist())
        assert ours == set(reference[row].nonzero().flatten().tolist())


def test_a_flat_distribution_is_not_held_by_the_candidates() -> None:
    """Near-uniform scores (an untrained model) put the nucleus far beyond 64 tokens: the caller must not use them."""
    _, _, holds = nucleus(peaked_logits(4, spread=0.01), top_p=0.95)
    assert not holds.any()


def test_the_likeliest_token_always_stays() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    ids, kept, holds = nucleus(logits, top_p=0.01)
    assert holds.item() and ids[0][kept[0] > 0].tolist() == [0]


@pytest.mark.parametrize("spread", [6.0, 0.01])
def test_a_seeded_row_draws_the_same_token_in_any_batch(spread: float) -> None:
    """Peaked rows sample from their nucleus, flat rows through the warpers on the whole vocabulary; either way the
    row's own generator decides, not its neighbours."""
    logits = peaked_logits(6, spread=spread, seed=1)
    sampling = [SamplingParams(temperature=0.7, top_p=0.95, max_tokens=4, seed=seed) for seed in range(6)]
    rows = [RowDecoding(s, None, 4) for s in sampling]
    cpu = torch.device("cpu")
    batched = RowSampler(rows, 0, cpu).choose(range(6), [[]] * 6, logits)
    alone = [RowSampler([row], 0, cpu).choose([0], [[]], logits[i : i + 1]) for i, row in enumerate(rows)]
    assert batched.tolist() == torch.cat(alone).tolist()
    kept = torch.isfinite(TopPLogitsWarper(0.95)(torch.empty(0), logits / 0.7))
    assert all(kept[i, token] for i, token in enumerate(batched.tolist()))
