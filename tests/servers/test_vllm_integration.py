"""The graph against a real vLLM server (CPU build, tiny-idefics3 + three role LoRA adapters, one per session).

The server's token ids and logprobs are checked against in-process transformers (and HF+PEFT for adapters), the
recorded ids against the server's own `/tokenize` and responses, and the server is shown to batch concurrent
graph runs. Closed-set answers are only checked for membership: vLLM may spell an option with a different
token split than in-process decoding, and its logprobs there are post-mask.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from vllm_server import VLLMServer

from emo_r3.agents.backends.transformers.chat import TransformersChatModel
from emo_r3.agents.backends.transformers.loading import load_hf_model
from emo_r3.agents.backends.vllm.chat import ServerNotReadyError, VLLMChatModel
from emo_r3.agents.backends.vllm.process import VLLMProcess, VLLMProcessError, free_port
from emo_r3.agents.call_record import ROLES, LLMCall
from emo_r3.agents.chat_model import ChatMessage, Completion, SamplingParams
from emo_r3.agents.images import PreparedImage, prepare_image
from emo_r3.agents.reflector import YES_NO, Reflector
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.trajectory import EmotionResult
from emo_r3.prompts import MIKELS_8

GREEDY = {
    "perceiver": SamplingParams(temperature=0.0, max_tokens=32),
    "reasoner": SamplingParams(temperature=0.0, max_tokens=64),
    "reflector": SamplingParams(temperature=0.0, max_tokens=4),
}
IMAGE_TOKENS_PER_IMAGE = 4  # 64 px, patch 16, scale factor 2
FREE_FORM = ("perceive", "reason")  # purposes without a closed set: ids comparable one for one
LOGPROB_ATOL = 1e-4


def vllm_graph(server: VLLMServer, *, adapters: bool = False, max_rounds: int = 1) -> EmotionGraph:
    """All three roles on the server: one shared base model, or each role on its own adapter of that base."""
    spec = {"backend": "vllm", "base_url": server.base_url, "model": server.model}
    if adapters:
        models = {role: {**spec, "adapter": role} for role in ROLES}
        roles = {role: {"model": role, "sampling": GREEDY[role]} for role in ROLES}
    else:
        models = {"v": spec}
        roles = {role: {"model": "v", "sampling": GREEDY[role]} for role in ROLES}
    return EmotionGraph.from_config(GraphConfig(models=models, roles=roles, max_rounds=max_rounds))


@dataclasses.dataclass
class GraphRun:
    graph: EmotionGraph
    queries: list[EmotionQuery]
    results: list[EmotionResult]

    @property
    def calls(self) -> list[LLMCall]:
        return [call for result in self.results for call in result.trajectory.calls]


@pytest.fixture(scope="module")
def base_run(vllm_server: VLLMServer, bundled_images: dict[str, Path]) -> GraphRun:
    graph = vllm_graph(vllm_server)
    queries = [
        EmotionQuery(images=[bundled_images["astronaut"]]),
        EmotionQuery(images=[bundled_images["rocket"]], text="launch day"),
        EmotionQuery(images=[bundled_images["chelsea"], bundled_images["coffee"]], text="two pictures of my day"),
    ]
    return GraphRun(graph, queries, asyncio.run(graph.abatch(queries, max_concurrency=3)))


@pytest.fixture(scope="module")
def in_process(vllm_server: VLLMServer) -> TransformersChatModel:
    return TransformersChatModel.from_dir(vllm_server.model_dir, model_id="tiny-idefics3")


@pytest.fixture(scope="module")
def image(bundled_images: dict[str, Path]) -> PreparedImage:
    return prepare_image(bundled_images["grace_hopper"])


def assert_same_completion(served: Completion | LLMCall, local: Completion, what: str) -> None:
    assert served.prompt_token_ids == local.prompt_token_ids, what
    assert served.completion_token_ids == local.completion_token_ids, what
    torch.testing.assert_close(
        torch.tensor(served.logprobs), torch.tensor(local.logprobs), atol=LOGPROB_ATOL, rtol=0, msg=what
    )


# --------------------------------------------------------------------------- the graph on the base model


def test_whole_graph_runs_on_vllm(base_run: GraphRun, in_process: TransformersChatModel) -> None:
    image_token = in_process.tokenizer.convert_tokens_to_ids("<image>")
    for query, result in zip(base_run.queries, base_run.results, strict=True):
        assert result.ok, result.error
        assert result.label in MIKELS_8.labels
        assert result.path[0] == "perceive" and result.path[-1] == "finalize"
        assert {call.role for call in result.trajectory.calls} == set(ROLES)
        for call in result.trajectory.calls:
            assert call.model_id == "vllm:tiny" and call.adapter is None
            assert call.error is None and call.completion_token_ids
            assert len(call.logprobs) == len(call.completion_token_ids)
            expected_images = 0 if call.purpose == "coherence" else IMAGE_TOKENS_PER_IMAGE * len(query.images)
            assert call.prompt_token_ids.count(image_token) == expected_images, call.purpose
            if call.choices:
                assert call.text in call.choices and call.finish_reason == "stop"


def test_ids_and_logprobs_equal_in_process_transformers(base_run: GraphRun, in_process: TransformersChatModel) -> None:
    free_form = [call for call in base_run.calls if call.purpose in FREE_FORM]
    assert len(free_form) >= 2 * len(base_run.queries)
    for call in free_form:
        replay = in_process.chat_sync(call.messages, call.sampling)
        assert_same_completion(call, replay, f"{call.purpose} round {call.round}")
        assert replay.text == call.text


def test_recorded_ids_are_the_servers(base_run: GraphRun, vllm_server: VLLMServer) -> None:
    """Prompt ids equal the server's /tokenize of the same OpenAI messages; completion ids are what it returned."""
    model = base_run.graph.models["perceiver"]
    assert isinstance(model, VLLMChatModel)
    calls = base_run.results[2].trajectory.calls  # two images, every purpose
    assert {call.purpose for call in calls} >= {"perceive", "reason", "coherence", "consistency"}
    with httpx.Client(base_url=vllm_server.base_url, timeout=60) as client:
        for call in calls:
            body = model.request_body(call.messages, call.sampling, choices=call.choices)
            tokenized = client.post(
                "/tokenize", json={"model": body["model"], "messages": body["messages"], "add_generation_prompt": True}
            ).json()
            assert tokenized["tokens"] == call.prompt_token_ids, call.purpose
            payload = client.post("/v1/chat/completions", json=body).json()  # greedy: the same answer again
            choice = payload["choices"][0]
            assert payload["prompt_token_ids"] == call.prompt_token_ids
            assert choice["token_ids"] == call.completion_token_ids, call.purpose
            assert (choice["message"]["content"] or "") == call.text
            served = [entry["logprob"] for entry in choice["logprobs"]["content"]]
            torch.testing.assert_close(torch.tensor(served), torch.tensor(call.logprobs), atol=LOGPROB_ATOL, rtol=0)


def test_closed_set_holds_for_a_random_model(vllm_server: VLLMServer, image: PreparedImage) -> None:
    """Hot sampling of a random model still answers only with an option: the server enforces the set."""
    model = VLLMChatModel(vllm_server.base_url, vllm_server.model)

    async def ask(seed: int) -> list[LLMCall]:
        reflector = Reflector(model, SamplingParams(temperature=1.5, max_tokens=4, seed=seed))
        feeling = f"I feel something, {seed} times over."
        _, coherence = await reflector.check_coherence(
            perception="A scene.", feeling=feeling, answered_label="awe", label_set=MIKELS_8, round=0
        )
        _, consistency = await reflector.check_consistency((image,), perception="A person in uniform.", round=0)
        return [coherence, consistency]

    async def ask_many() -> list[LLMCall]:
        return [call for pair in await asyncio.gather(*(ask(seed) for seed in range(24))) for call in pair]

    calls = asyncio.run(ask_many())
    for call in calls:
        assert call.choices in (list(MIKELS_8.labels), YES_NO)
        assert call.text in call.choices and call.finish_reason == "stop"
        assert call.parsed is not None
    assert len({call.text for call in calls if call.purpose == "coherence"}) > 1  # really sampled, not fixed


def test_sample_n_is_distinct_and_reproducible(vllm_server: VLLMServer, image: PreparedImage) -> None:
    model = VLLMChatModel(vllm_server.base_url, vllm_server.model)
    messages = [ChatMessage.user("How does this picture make you feel?", (image,))]

    def sample(seed: int) -> list[Completion]:
        return asyncio.run(model.sample(messages, SamplingParams(temperature=1.0, max_tokens=12, seed=seed), n=4))

    first = sample(11)
    assert len(first) == 4
    assert len({tuple(c.completion_token_ids) for c in first}) == 4
    assert len({tuple(c.prompt_token_ids) for c in first}) == 1
    assert all(len(c.logprobs) == len(c.completion_token_ids) for c in first)
    again = sample(11)
    assert [c.completion_token_ids for c in again] == [c.completion_token_ids for c in first]
    assert [c.completion_token_ids for c in sample(12)] != [c.completion_token_ids for c in first]


def test_a_burst_of_seeded_requests_over_the_token_budget_leaves_the_server_up(vllm_server: VLLMServer) -> None:
    """64 seeded prompts of ~160 tokens exceed one step's 2048-token budget. With chunked prefill on, the CPU
    build splits one of them and dies ("CPU Generator does not use offset"); VLLMProcess turns it off."""
    model = VLLMChatModel(vllm_server.base_url, vllm_server.model, max_retries=0)

    async def burst() -> list[Completion]:
        return await asyncio.gather(
            *(
                model.chat([ChatMessage.user(f"{i}: " + "tell me more " * 50)], SamplingParams(max_tokens=2, seed=i))
                for i in range(64)
            )
        )

    assert all(completion.completion_token_ids for completion in asyncio.run(burst()))
    asyncio.run(model.check_ready())


def test_concurrent_graph_runs_are_batched(vllm_server: VLLMServer, bundled_images: dict[str, Path]) -> None:
    graph = vllm_graph(vllm_server, max_rounds=0)
    pictures = sorted(bundled_images.values())
    queries = [EmotionQuery(images=[pictures[i % len(pictures)]], text=f"moment {i}") for i in range(16)]

    async def run_and_watch() -> tuple[list[EmotionResult], float]:
        done = asyncio.Event()
        watcher = asyncio.create_task(max_running_requests(vllm_server.base_url, done))
        try:
            results = await graph.abatch(queries, max_concurrency=16)
        finally:
            done.set()
        return results, await watcher

    results, most_running = asyncio.run(run_and_watch())
    assert all(result.ok for result in results), [r.error for r in results if not r.ok]
    assert most_running > 1, "the server never ran two requests in one batch"


async def max_running_requests(base_url: str, done: asyncio.Event) -> float:
    """Poll /metrics until `done`; the most requests the server had in its running batch at once."""
    most = 0.0
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while not done.is_set():
            metrics = (await client.get("/metrics")).text
            running = [
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("vllm:num_requests_running")
            ]
            most = max(most, sum(running))
            await asyncio.sleep(0.02)
    return most


# --------------------------------------------------------------------------- one adapter per role


@pytest.fixture(scope="module")
def adapter_run(vllm_server: VLLMServer, bundled_images: dict[str, Path]) -> GraphRun:
    graph = vllm_graph(vllm_server, adapters=True)
    queries = [EmotionQuery(images=[bundled_images["astronaut"]], text="first day at work")]
    return GraphRun(graph, queries, [graph.run(queries[0])])


def test_each_role_runs_on_its_adapter(adapter_run: GraphRun) -> None:
    result = adapter_run.results[0]
    assert result.ok, result.error
    assert {call.role for call in result.trajectory.calls} == set(ROLES)
    for call in result.trajectory.calls:
        assert call.adapter == call.role and call.model_id == "vllm:tiny"
        if call.choices:
            assert call.text in call.choices


def peft_model(server: VLLMServer, role: str) -> TransformersChatModel:
    """HF + PEFT in-process: the base loaded fresh (PEFT injects its layers in place) with the role's adapter."""
    loaded = load_hf_model(server.model_dir)
    wrapped = PeftModel.from_pretrained(loaded.model, server.adapters[role]).eval()
    return TransformersChatModel(dataclasses.replace(loaded, model=wrapped), model_id=f"peft:{role}", adapter="default")


@pytest.mark.parametrize("role", ROLES)
def test_served_adapter_equals_hf_peft_and_differs_from_base(
    role: str, adapter_run: GraphRun, vllm_server: VLLMServer
) -> None:
    call = next(c for c in adapter_run.results[0].trajectory.calls if c.role == role)
    sampling = SamplingParams(temperature=0.0, max_tokens=16)
    served = VLLMChatModel(vllm_server.base_url, vllm_server.model, adapter=role)
    base = VLLMChatModel(vllm_server.base_url, vllm_server.model)
    adapted = asyncio.run(served.chat(call.messages, sampling))
    assert adapted.adapter == role
    assert_same_completion(adapted, peft_model(vllm_server, role).chat_sync(call.messages, sampling), role)
    assert adapted.completion_token_ids != asyncio.run(base.chat(call.messages, sampling)).completion_token_ids


def test_base_and_adapter_requests_batched_together_keep_their_models(
    vllm_server: VLLMServer, image: PreparedImage
) -> None:
    """Regression guard for the CPU build: with every LoRA slot taken, a base request batched with adapter
    requests silently got the last adapter. VLLMProcess keeps one slot spare (--max-loras = adapters + 1)."""
    messages = [ChatMessage.user("What stands out in this picture?", (image,))]
    sampling = SamplingParams(temperature=0.0, max_tokens=12)
    models = [VLLMChatModel(vllm_server.base_url, vllm_server.model, adapter=name) for name in (None, *ROLES)]

    async def answers(together: bool) -> list[list[int]]:
        if together:
            done = await asyncio.gather(*(model.chat(messages, sampling) for model in models for _ in range(2)))
        else:
            done = [await model.chat(messages, sampling) for model in models for _ in range(2)]
        return [completion.completion_token_ids for completion in done]

    alone = asyncio.run(answers(together=False))
    assert len({tuple(ids) for ids in alone}) == len(models)  # four different models
    assert asyncio.run(answers(together=True)) == alone


# --------------------------------------------------------------------------- readiness


def test_check_ready_names_what_is_missing(vllm_server: VLLMServer, adapter_run: GraphRun) -> None:
    url, name = vllm_server.base_url, vllm_server.model
    asyncio.run(adapter_run.graph.check_ready())
    for adapter in (None, *ROLES):
        asyncio.run(VLLMChatModel(url, name, adapter=adapter).check_ready())
    with pytest.raises(ServerNotReadyError, match=r"'critic'.*--lora-modules critic=DIR"):
        asyncio.run(VLLMChatModel(url, name, adapter="critic").check_ready())
    with pytest.raises(ServerNotReadyError, match=r"'huge'.*--served-model-name huge"):
        asyncio.run(VLLMChatModel(url, "huge").check_ready())
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerNotReadyError, match=r"(?s)cannot connect.*vllm\.entrypoints\.openai\.api_server"):
        asyncio.run(VLLMChatModel(dead, name).check_ready())


# --------------------------------------------------------------------------- the server process itself


def test_server_command_keeps_a_spare_lora_slot(tmp_path: Path) -> None:
    adapters = {role: tmp_path / role for role in ROLES}
    process = VLLMProcess(tmp_path / "model", served_name="tiny", port=8123, lora_modules=adapters)
    command = process.command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--max-loras") + 1] == "4"  # adapters + 1: see VLLMProcess.command
    assert "--no-enable-chunked-prefill" in command  # see VLLMProcess.chunked_prefill
    assert command[command.index("--lora-modules") + 1 :][:3] == [f"{r}={tmp_path / r}" for r in ROLES]
    assert process.served_names == ["tiny", *ROLES] and process.base_url == "http://127.0.0.1:8123"


def test_server_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    """An interpreter without vLLM: the process dies at once and the error shows why, without waiting 180 s."""
    process = VLLMProcess(tmp_path, served_name="tiny", python=sys.executable, log_path=tmp_path / "server.log")
    process.start()
    try:
        with pytest.raises(VLLMProcessError, match=r"(?s)exited with code 1 .*No module named 'vllm'"):
            process.wait_ready(timeout_s=60)
    finally:
        assert process.stop() == 1
