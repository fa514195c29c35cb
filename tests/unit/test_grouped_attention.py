"""grouped_sdpa_attention on a tiny in-memory Llama with grouped key/value heads: the same logits as transformers'
sdpa for a left-padded batch, prefill and a cached decoding step, with the heads read in place."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from emo_r3.agents.backends.transformers import grouped_attention
from emo_r3.agents.backends.transformers.grouped_attention import GROUPED_SDPA, use_grouped_sdpa


def tiny_llama(key_value_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=key_value_heads, head_dim=8, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def prefill_and_step(model: LlamaForCausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a left-padded two-row prompt, then of one cached decoding step."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache).logits
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        step = model(
            input_ids=torch.tensor([[9], [10]]), attention_mask=mask, position_ids=positions[:, -1:] + 1,
            past_key_values=cache,
        ).logits  # fmt: skip
    return first, step


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls handed on to transformers' sdpa (which repeats grouped heads)."""
    calls: list[int] = []
    handed_on = grouped_attention.sdpa_attention_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return handed_on(*args, **kwargs)

    monkeypatch.setattr(grouped_attention, "sdpa_attention_forward", counted)
    return calls


def test_grouped_heads_give_sdpas_logits_read_in_place(sdpa_calls: list[int]) -> None:
    plain = tiny_llama(key_value_heads=2)
    grouped = copy.deepcopy(plain)
    use_grouped_sdpa(grouped)
    assert grouped.config._attn_implementation == GROUPED_SDPA
    expected, got = prefill_and_step(plain), prefill_and_step(grouped)
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, atol=1e-6, rtol=0)
    assert sdpa_calls == []


def test_models_without_groups_keep_sdpa(sdpa_calls: list[int]) -> None:
    plain = tiny_llama(key_value_heads=6)
    grouped = copy.deepcopy(plain)
    use_grouped_sdpa(grouped)
    expected, got = prefill_and_step(plain), prefill_and_step(grouped)
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, atol=0, rtol=0)
    assert len(sdpa_calls) == 2 * 2  # two layers, two forwards


def test_gradients_flow_through_grouped_heads() -> None:
    """Training forwards of padded rows take this path too."""
    plain = tiny_llama(key_value_heads=2)
    grouped = copy.deepcopy(plain)
    use_grouped_sdpa(grouped)
    ids, mask = torch.tensor([[0, 5, 6, 7], [1, 2, 3, 4]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    for model in (plain, grouped):
        model(input_ids=ids, attention_mask=mask).logits[:, -1].logsumexp(-1).sum().backward()
    for (name, want), have in zip(plain.named_parameters(), grouped.parameters(), strict=True):
        torch.testing.assert_close(have.grad, want.grad, atol=1e-5, rtol=1e-4, msg=name)
