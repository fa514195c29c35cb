"""In-process batching: concurrent calls share `generate` and each still gets exactly what it would alone.

Greedy batched output equals greedy one-at-a-time output token for token; seeded sampling keeps each call's own
stream (its own seed, temperature, top-p/top-k/min-p, length budget) whatever it is batched with; logprobs of batched
graph runs match the trainer's forward of the same ids; a failing call fails alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_r3.agents.backends.transformers.batching import BatchSettings
from emo_r3.agents.backends.transformers.chat import TransformersChatModel
from emo_r3.agents.backends.transformers.grouped_attention import GROUPED_SDPA
from emo_r3.agents.chat_model import ChatMessage, Completion, ImagePart, SamplingParams, TextPart
from emo_r3.agents.images import PreparedImage, prepare_image
from emo_r3.agents.offline_models import ensure_model
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.trajectory import EmotionQuery
from emo_r3.training.logprobs import MicroBatch, micro_batch_logprobs
from emo_r3.training.rows import rows_from_trajectory

MODELS = ["tiny-idefics3", "tiny-qwen2.5-vl", "smollm2"]
QUESTIONS = ["How does this feel?", "Describe the mood of the scene in a few words.", "Who is here?", "Why?"]
PICTURES = ["astronaut", "coffee", "chelsea", "rocket"]


@pytest.fixture(scope="module", params=MODELS)
def chat_model(request: pytest.FixtureRequest, model_cache: Path) -> TransformersChatModel:
    # A long wait, so every concurrent call below surely lands in one batch.
    batching = BatchSettings(max_size=8, wait_ms=200)
    return TransformersChatModel.from_dir(ensure_model(request.param, model_cache), batching=batching)


@pytest.fixture(scope="module")
def pictures(bundled_images: dict[str, Path]) -> list[PreparedImage]:
    return [prepare_image(bundled_images[name], max_pixels=64 * 64) for name in PICTURES]


def conversations(model: TransformersChatModel, pictures: list[PreparedImage]) -> list[list[ChatMessage]]:
    """Prompts of different lengths (so rows are padded), with an image each when the model takes images."""
    prompts = []
    for question, picture in zip(QUESTIONS, pictures, strict=True):
        parts = (
            (ImagePart(image=picture), TextPart(text=question)) if model.supports_images else (TextPart(text=question),)
        )
        prompts.append([ChatMessage(role="user", content=parts)])
    return prompts


def together(
    model: TransformersChatModel, prompts: list[list[ChatMessage]], samplings: list[SamplingParams]
) -> list[Completion]:
    async def calls() -> list[Completion]:
        return await asyncio.gather(*(model.chat(p, s) for p, s in zip(prompts, samplings, strict=True)))

    return asyncio.run(calls())


def alone_and_together(
    model: TransformersChatModel, prompts: list[list[ChatMessage]], samplings: list[SamplingParams]
) -> tuple[list[Completion], list[Completion]]:
    alone = [model.chat_sync(prompt, sampling) for prompt, sampling in zip(prompts, samplings, strict=True)]
    return alone, together(model, prompts, samplings)


def batched_as_alone(
    model: TransformersChatModel, prompts: list[list[ChatMessage]], samplings: list[SamplingParams]
) -> tuple[list[Completion], list[tuple[int, int]]]:
    """The calls run together, checked to be one batch that gives each call what it gets alone, and the (rows,
    tokens) of each forward pass that batch ran."""
    alone = [model.chat_sync(prompt, sampling) for prompt, sampling in zip(prompts, samplings, strict=True)]
    shapes: list[tuple[int, int]] = []
    hook = model.loaded.model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        batched = together(model, prompts, samplings)
    finally:
        hook.remove()
    assert_one_batch(batched)
    assert_same_completions(alone, batched)
    return batched, shapes


def assert_same_completions(alone: list[Completion], together: list[Completion]) -> None:
    for one, batched in zip(alone, together, strict=True):
        assert batched.prompt_token_ids == one.prompt_token_ids
        assert batched.completion_token_ids == one.completion_token_ids
        assert batched.finish_reason == one.finish_reason
        np.testing.assert_allclose(batched.logprobs, one.logprobs, atol=1e-4)


def assert_one_batch(together: list[Completion]) -> None:
    """Calls of one batch share its generation time; they were queued while it gathered."""
    assert len({c.latency_s for c in together}) == 1, "the concurrent calls did not share a batch"
    assert max(c.queue_s for c in together) > 0


def test_greedy_batched_equals_greedy_alone(chat_model: TransformersChatModel, pictures: list[PreparedImage]) -> None:
    """Padded rows of SmolLM2 (3 key/value heads for 9 query heads) read them in place; alone, sdpa does."""
    assert chat_model.loaded.model.config._attn_implementation == GROUPED_SDPA
    prompts = conversations(chat_model, pictures)
    alone, together = alone_and_together(chat_model, prompts, [SamplingParams(temperature=0, max_tokens=12)] * 4)
    assert_one_batch(together)
    assert_same_completions(alone, together)
    assert len({tuple(c.prompt_token_ids) for c in together}) == 4


def test_each_row_keeps_its_own_sampling(chat_model: TransformersChatModel, pictures: list[PreparedImage]) -> None:
    """One batch mixing seeds, warpers, greedy and length budgets gives each call what it gets alone."""
    samplings = [
        SamplingParams(temperature=1.0, max_tokens=10, seed=1),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_tokens=6, seed=2),
        SamplingParams(temperature=0, max_tokens=3),
        SamplingParams(temperature=1.3, min_p=0.05, max_tokens=16, seed=3),
    ]
    prompts = conversations(chat_model, pictures)
    alone, together = alone_and_together(chat_model, prompts, samplings)
    assert_one_batch(together)
    assert_same_completions(alone, together)
    for completion, sampling in zip(together, samplings, strict=True):
        assert len(completion.completion_token_ids) <= sampling.max_tokens
        if completion.finish_reason == "length":
            assert len(completion.completion_token_ids) == sampling.max_tokens


def test_same_seed_same_sample_in_any_batch(chat_model: TransformersChatModel, pictures: list[PreparedImage]) -> None:
    prompt = conversations(chat_model, pictures)[0]
    seeded = [SamplingParams(temperature=1.0, max_tokens=8, seed=seed) for seed in (5, 5, 6, 6)]
    _, together = alone_and_together(chat_model, [prompt] * 4, seeded)
    assert together[0].completion_token_ids == together[1].completion_token_ids
    assert together[2].completion_token_ids == together[3].completion_token_ids
    assert together[0].completion_token_ids != together[2].completion_token_ids


def test_samples_of_one_prompt_share_its_prefill(
    chat_model: TransformersChatModel, pictures: list[PreparedImage]
) -> None:
    """A batch of two prompts sampled three times each (a rollout group): the prefill takes the two prompts once each
    (after their common opening, if they share one), not six rows (except Qwen2.5-VL, whose positions need generate's
    own prefill); decoding runs six rows, and every sample is what it is alone."""
    prompts = conversations(chat_model, pictures)[:2]
    grouped = [prompts[0], prompts[1]] * 3
    samplings = [SamplingParams(temperature=1.0, max_tokens=8, seed=seed) for seed in range(6)]
    _, shapes = batched_as_alone(chat_model, grouped, samplings)
    prefill_rows = [rows for rows, length in shapes if length > 1]
    decode_rows = [rows for rows, length in shapes if length == 1]
    assert max(prefill_rows) == (6 if chat_model.loaded.model_type == "qwen2_5_vl" else 2)
    assert max(decode_rows) == 6


def test_prompts_that_open_alike_share_that_prefill(
    chat_model: TransformersChatModel, pictures: list[PreparedImage]
) -> None:
    """Four prompts with one long system message and their own pictures and questions (one role across graph runs):
    the model runs the system text once (one row), then the four rest-of-prompts on its cache, and every call gets
    what it gets alone (Qwen2.5-VL, decoded by `generate`, prefills the four rows whole)."""
    system = ChatMessage(role="system", content=[TextPart(text=" ".join(["Name the feeling the picture gives."] * 6))])
    prompts = [[system, *conversation] for conversation in conversations(chat_model, pictures)]
    samplings = [SamplingParams(temperature=1.0, max_tokens=6, seed=seed) for seed in range(4)]
    batched, shapes = batched_as_alone(chat_model, prompts, samplings)
    if chat_model.loaded.model_type == "qwen2_5_vl":
        assert shapes[0][0] == 4
    else:
        (rows, shared), (suffix_rows, _) = shapes[:2]
        assert (rows, suffix_rows) == (1, 4)
        shortest = min(len(c.prompt_token_ids) for c in batched)
        assert 40 <= shared < shortest
        assert all(c.prompt_token_ids[:shared] == batched[0].prompt_token_ids[:shared] for c in batched)


def test_finished_rows_leave_the_batch(chat_model: TransformersChatModel, pictures: list[PreparedImage]) -> None:
    """Each decoding step runs only the rows still generating: with budgets of 2, 5 and 12 tokens, the step after
    token k carries the rows whose completion is longer than k (Qwen2.5-VL, decoded by `generate`, keeps every row
    to the end)."""
    prompts = conversations(chat_model, pictures)[:3]
    samplings = [SamplingParams(temperature=0, max_tokens=budget) for budget in (2, 5, 12)]
    batched, shapes = batched_as_alone(chat_model, prompts, samplings)
    lengths = [len(c.completion_token_ids) for c in batched]
    decoding_steps = [rows for rows, tokens in shapes if tokens == 1]
    if chat_model.loaded.model_type == "qwen2_5_vl":
        assert decoding_steps == [3] * (max(lengths) - 1)
    else:
        assert decoding_steps == [sum(length > k for length in lengths) for k in range(1, max(lengths))]
        assert decoding_steps[-1] < 3, "no row finished early, so nothing was dropped"


def test_closed_set_answers_batch_with_their_own_options(
    chat_model: TransformersChatModel, pictures: list[PreparedImage]
) -> None:
    option_sets = [["joy", "sadness"], ["anger", "fear", "awe"], ["contentment"], ["excitement", "disgust"]]
    prompts = conversations(chat_model, pictures)
    greedy = SamplingParams(temperature=0, max_tokens=512)

    async def together() -> list[Completion]:
        calls = (chat_model.chat(p, greedy, choices=o) for p, o in zip(prompts, option_sets, strict=True))
        return await asyncio.gather(*calls)

    batched = asyncio.run(together())
    alone = [chat_model.chat_sync(p, greedy, o) for p, o in zip(prompts, option_sets, strict=True)]
    assert_one_batch(batched)
    assert_same_completions(alone, batched)
    assert [c.text.strip() in options for c, options in zip(batched, option_sets, strict=True)] == [True] * 4


def test_a_failing_call_fails_alone(chat_model: TransformersChatModel, pictures: list[PreparedImage]) -> None:
    """A request that breaks its batch (fault injected: a token id outside the vocabulary) fails; the others in the
    batch are rerun one by one and succeed."""
    sampling = SamplingParams(temperature=0, max_tokens=4)
    good = [chat_model.request(prompt, sampling) for prompt in conversations(chat_model, pictures)[:2]]
    broken_ids = good[0].inputs["input_ids"].clone()
    broken_ids[0, -1] = chat_model.loaded.model.config.get_text_config().vocab_size + 5
    broken = dataclasses.replace(good[0], inputs={**good[0].inputs, "input_ids": broken_ids})
    first, failed, second = [chat_model.loaded.batcher.submit(r) for r in (good[0], broken, good[1])]
    assert isinstance(failed.exception(), IndexError)
    assert (
        first.result().result.completion_ids
        == chat_model.chat_sync(conversations(chat_model, pictures)[0], sampling).completion_token_ids
    )
    assert second.result().result.completion_ids


def test_batched_graph_runs_give_the_trainers_logprobs(model_cache: Path, bundled_images: dict[str, Path]) -> None:
    """Four sampled graph runs at once (perceiver, reasoner and reflector calls batched across runs): every trained
    row's rollout logprobs equal the trainer's forward of the recorded ids."""
    roles = ("perceiver", "reasoner", "reflector")
    sampling = {"temperature": 1.0, "max_tokens": 8}
    config = {
        "max_rounds": 0,
        "models": {"default": {"path": "offline:tiny-idefics3", "batching": {"max_size": 8, "wait_ms": 100}}},
        "roles": {role: {"sampling": sampling} for role in roles},
    }
    graph = EmotionGraph.from_config(config, cache_dir=model_cache)
    queries = [EmotionQuery(images=[bundled_images[name]]) for name in PICTURES]
    results = asyncio.run(graph.abatch(queries, max_concurrency=4))
    assert all(result.ok for result in results), [result.error for result in results]
    calls = [call for result in results for call in result.trajectory.calls]
    assert max(sum(other.latency_s == call.latency_s for other in calls) for call in calls) > 1, "nothing batched"
    loaded = graph.models["perceiver"].loaded
    policy_of, advantages = dict.fromkeys(roles, "shared"), dict.fromkeys(roles, 1.0)
    with torch.no_grad():
        for result in results:
            rows = rows_from_trajectory(result.trajectory, group="q", advantages=advantages, policy_of=policy_of)
            assert rows
            for row in rows:
                (trainer,) = micro_batch_logprobs(loaded, MicroBatch([row]))
                np.testing.assert_allclose(trainer.numpy(), row.rollout_logprobs, atol=1e-4)
