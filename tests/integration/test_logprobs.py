"""Trainer-side logprobs: packed rows equal rows run alone (dense block mask or per-row attention), and the chunked
LM head equals the full one, gradients included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import emo_r3.training.logprobs
from emo_r3.agents.backends.transformers.loading import LoadedModel, load_hf_model
from emo_r3.agents.offline_models import ensure_model
from emo_r3.training.logprobs import (
    MicroBatch,
    chunked_token_logprobs,
    micro_batch_logprobs,
    micro_batches,
    use_packed_sdpa,
)
from emo_r3.training.rows import TrainingRow

# (prompt, completion) lengths: different, so every row starts at another offset of the pack.
ROW_SHAPES = [(5, 7), (3, 2), (11, 9), (1, 4)]


def make_row(name: str, prompt: list[int], completion: list[int]) -> TrainingRow:
    return TrainingRow(
        trajectory_id=name,
        call_idx=0,
        group="g",
        role="reasoner",
        policy="p",
        prompt_token_ids=prompt,
        completion_token_ids=completion,
        rollout_logprobs=[0.0] * len(completion),
        advantage=1.0,
    )


def random_rows(shapes: list[tuple[int, int]], vocab: int = 1000, seed: int = 0) -> list[TrainingRow]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i, (prompt, completion) in enumerate(shapes):
        ids = torch.randint(0, vocab, (prompt + completion,), generator=generator).tolist()
        rows.append(make_row(f"t{i}", ids[:prompt], ids[prompt:]))
    return rows


@pytest.fixture(scope="module", params=["tiny-idefics3", "tiny-qwen2.5-vl"])
def tiny_model(request: pytest.FixtureRequest, model_cache: Path) -> LoadedModel:
    return load_hf_model(ensure_model(request.param, model_cache))


@pytest.mark.parametrize("packed_attention", [False, True], ids=["block-mask", "per-row"])
@torch.no_grad()
def test_packed_rows_equal_rows_run_alone(tiny_model: LoadedModel, packed_attention: bool) -> None:
    rows = random_rows(ROW_SHAPES)
    alone = [micro_batch_logprobs(tiny_model, MicroBatch([row]))[0] for row in rows]
    if packed_attention:
        use_packed_sdpa(tiny_model.model)
    try:
        packed = micro_batch_logprobs(tiny_model, MicroBatch(rows))
    finally:
        tiny_model.model.set_attn_implementation("sdpa")
    for row, value, expected in zip(rows, packed, alone, strict=True):
        assert value.shape == (len(row.completion_token_ids),)
        torch.testing.assert_close(value, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_per_row_attention_attends_each_row_alone(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed forward reaches `packed_sdpa_attention` with the row lengths, not a dense T×T mask."""
    lengths: list[int] = []
    sdpa = emo_r3.training.logprobs.sdpa_attention_forward

    def spy(module: torch.nn.Module, query: torch.Tensor, *args: object, **kwargs: object) -> object:
        lengths.append(query.shape[2])
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setattr(emo_r3.training.logprobs, "sdpa_attention_forward", spy)
    rows = random_rows(ROW_SHAPES)
    use_packed_sdpa(tiny_model.model)
    try:
        micro_batch_logprobs(tiny_model, MicroBatch(rows))
    finally:
        tiny_model.model.set_attn_implementation("sdpa")
    layers = tiny_model.model.config.get_text_config().num_hidden_layers
    assert lengths == [row.num_tokens for row in rows] * layers


@torch.no_grad()
def test_context_changes_logprobs(tiny_model: LoadedModel) -> None:
    """The equality above is not vacuous: a row seen after another one's tokens gets other logprobs."""
    first, second = random_rows(ROW_SHAPES[:2])
    merged = make_row("merged", first.input_ids + second.prompt_token_ids, second.completion_token_ids)
    alone = micro_batch_logprobs(tiny_model, MicroBatch([second]))[0]
    after_first = micro_batch_logprobs(tiny_model, MicroBatch([merged]))[0]
    assert (alone - after_first).abs().max() > 1e-4


def test_micro_batches_pack_in_order_within_budget() -> None:
    rows = random_rows(ROW_SHAPES)  # 12, 5, 20, 5 tokens
    batches = list(micro_batches(rows, max_tokens=20))
    assert [[row.trajectory_id for row in batch.rows] for batch in batches] == [["t0", "t1"], ["t2"], ["t3"]]
    assert [len(batch.rows) for batch in micro_batches(rows, max_tokens=20, pack=False)] == [1, 1, 1, 1]


def full_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(head(hidden).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def head_and_inputs(n: int = 10, width: int = 8, vocab: int = 13) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(width, vocab), torch.randn(n, width), torch.randint(0, vocab, (n,))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 10, 64])
def test_chunked_logprobs_equal_full_log_softmax(chunk_size: int) -> None:
    head, hidden, targets = head_and_inputs()
    with torch.no_grad():
        chunked = chunked_token_logprobs(hidden, head, targets, chunk_size)
        torch.testing.assert_close(chunked, full_logprobs(hidden, head, targets), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])
def test_chunked_gradients_equal_full_gradients(chunk_size: int) -> None:
    """Recomputing each chunk in backward gives the gradients of the full computation (inputs and head)."""
    head, hidden, targets = head_and_inputs()
    weights = torch.randn(targets.shape[0])
    gradients = []
    for compute in (
        lambda h: chunked_token_logprobs(h, head, targets, chunk_size),
        lambda h: full_logprobs(h, head, targets),
    ):
        head.zero_grad()
        leaf = hidden.clone().requires_grad_(True)
        (compute(leaf) * weights).sum().backward()
        gradients.append((leaf.grad, head.weight.grad.clone(), head.bias.grad.clone()))
    for chunked, full in zip(*gradients, strict=True):
        torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)


def test_chunk_size_must_be_positive() -> None:
    head, hidden, targets = head_and_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logprobs(hidden, head, targets, 0)
