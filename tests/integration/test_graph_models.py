"""The whole graph on real (tiny and SmolLM2-based) models in-process: recorded ids and logprobs are the model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emo_r3.agents.backends.transformers.chat import TransformersChatModel
from emo_r3.agents.call_record import LLMCall
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.prompts import MIKELS_8

SHORT = {
    "perceiver": {"sampling": {"temperature": 0.0, "max_tokens": 48}},
    "reasoner": {"sampling": {"temperature": 0.0, "max_tokens": 96}},
    "reflector": {"sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 4, "seed": 7}},
}


def assert_token_exact(model: TransformersChatModel, call: LLMCall) -> None:
    """Text decodes from the ids, and a teacher-forced forward pass over prompt+completion ids reproduces the
    recorded logprobs: the record is what the model did, usable for training without re-tokenizing."""
    tokenizer = model.tokenizer
    assert call.error is None and call.completion_token_ids
    assert tokenizer.decode(call.completion_token_ids, skip_special_tokens=True) == call.text
    assert len(call.logprobs) == len(call.completion_token_ids)
    inputs = model.encode(call.messages)
    assert inputs["input_ids"][0].tolist() == call.prompt_token_ids
    ids = torch.tensor([call.prompt_token_ids + call.completion_token_ids])
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in extra:  # per-token modality ids (Qwen-VL): completion tokens are text (0)
        extra["mm_token_type_ids"] = torch.nn.functional.pad(
            extra["mm_token_type_ids"], (0, len(call.completion_token_ids))
        )
    with torch.inference_mode():
        logits = model._loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
    start = len(call.prompt_token_ids)
    logprobs = torch.log_softmax(logits[start - 1 : -1].float(), dim=-1)
    forced = logprobs.gather(1, torch.tensor(call.completion_token_ids)[:, None])[:, 0]
    torch.testing.assert_close(forced, torch.tensor(call.logprobs), atol=2e-3, rtol=0)


def graph_for(kind: str, cache: Path, **overrides) -> EmotionGraph:
    config = GraphConfig(models={"default": {"path": f"offline:{kind}"}}, roles=SHORT, **overrides)
    return EmotionGraph.from_config(config, cache_dir=cache)


@pytest.fixture(scope="module")
def tiny_idefics3(model_cache) -> EmotionGraph:
    return graph_for("tiny-idefics3", model_cache, max_rounds=1)


def test_tiny_idefics3_graph_on_bundled_and_generated_images(tiny_idefics3, bundled_images, noise_image):
    queries = [EmotionQuery(images=[bundled_images[name]]) for name in ("astronaut", "rocket")]
    queries.append(EmotionQuery(images=[noise_image, bundled_images["coffee"]], text="two pictures of my day"))
    import asyncio

    results = asyncio.run(tiny_idefics3.abatch(queries, max_concurrency=2))
    model = tiny_idefics3.models["perceiver"]
    image_token = model.tokenizer.convert_tokens_to_ids("<image>")
    for query, result in zip(queries, results, strict=True):
        assert result.ok and result.label in MIKELS_8.labels
        assert result.path[0] == "perceive" and result.path[-1] == "finalize"
        roles = {call.role for call in result.trajectory.calls}
        assert roles == {"perceiver", "reasoner", "reflector"}
        perceive = result.trajectory.calls[0]
        assert perceive.prompt_token_ids.count(image_token) == 4 * len(query.images)  # 64 px, patch 16, scale 2
        for call in result.trajectory.calls:
            if call.choices:
                assert call.text.strip() in call.choices  # the closed set held, chosen by constrained decoding
            if call.purpose != "coherence":  # coherence is text-only; image calls carry the pixels
                assert call.prompt_token_ids.count(image_token) == 4 * len(query.images)
    for call in results[2].trajectory.calls:
        assert_token_exact(model, call)


def test_tiny_qwen2_5_vl_runs_the_same_graph(model_cache, bundled_images):
    graph = graph_for("tiny-qwen2.5-vl", model_cache, max_rounds=0)
    result = graph.run(EmotionQuery(images=[bundled_images["chelsea"]], text="my cat"))
    assert result.ok and result.label in MIKELS_8.labels
    model = graph.models["perceiver"]
    pad = model.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert result.trajectory.calls[0].prompt_token_ids.count(pad) > 0  # expanded image tokens, as vLLM returns
    assert_token_exact(model, result.trajectory.calls[0])
    assert_token_exact(model, next(c for c in result.trajectory.calls if c.purpose == "consistency"))


def test_smollm2_reasoner_and_reflector_with_an_image_perceiver(model_cache, bundled_images):
    """SmolLM2 as the text model: the reasoner is the text-only SmolLM2, perceiver/reflector the SmolLM2-Idefics3."""
    config = GraphConfig(
        models={"vision": {"path": "offline:smollm2-idefics3"}, "text": {"path": "offline:smollm2"}},
        roles={
            "perceiver": {"model": "vision", **SHORT["perceiver"]},
            "reasoner": {"model": "text", "sampling": {"temperature": 0.0, "max_tokens": 160}},
            "reflector": {"model": "vision", **SHORT["reflector"]},
        },
        max_rounds=1,
    )
    graph = EmotionGraph.from_config(config, cache_dir=model_cache)
    assert not graph.models["reasoner"].supports_images and graph.models["perceiver"].supports_images
    result = graph.run(EmotionQuery(images=[bundled_images["grace_hopper"]], text="a portrait of a scientist"))
    assert result.ok and result.label in MIKELS_8.labels
    reason = next(c for c in result.trajectory.calls if c.purpose == "reason")
    assert len(reason.text.split()) >= 5  # fluent text from the pretrained model, not random tokens
    reasoning = result.trajectory.reasonings[0]
    boxed_label = MIKELS_8.normalize(reasoning.boxed)
    assert reasoning.label_source == ("boxed" if boxed_label else "closed_set")
    for call in result.trajectory.calls:
        owner = graph.models[call.role]
        assert_token_exact(owner, call)
