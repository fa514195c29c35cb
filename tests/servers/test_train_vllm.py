"""The `lora` trainer with rollouts on a real vLLM CPU server: the role adapters are reloaded over its HTTP API after
every step, and the served adapters then answer exactly like the trainer's own (proof that the weights synced).

The server is this module's own (runtime LoRA loading on, no initial adapters), not the session's `vllm_server`:
training reloads adapters in place, which would change what other tests see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file
from vllm_server import require_vllm

from emo_r3.agents.backends.vllm.chat import VLLMChatModel
from emo_r3.agents.backends.vllm.process import VLLMProcess
from emo_r3.agents.call_record import ROLES
from emo_r3.agents.chat_model import ChatMessage, ChatModel, Completion, SamplingParams
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.training.config import TrainConfig
from emo_r3.training.local_trainer import LocalTrainer

SERVED = "tiny"
LORA_RANK = 8
STEPS = 2
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
# vLLM CPU and transformers agree to ~1e-6 in float32; test_the_comparison_would_catch_a_missed_reload checks
# that each training step moves the answers by far more.
LOGPROB_ATOL = 1e-3
# The dataset: one image per Mikels-8 folder name used, one prompt per step.
IMAGES = {"contentment": "astronaut", "fear": "rocket"}

pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Server:
    base_url: str
    log_path: Path


@pytest.fixture(scope="module")
def lora_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """vLLM serving tiny-idefics3 with LoRA on, no adapters yet, and /v1/load_lora_adapter enabled."""
    from emo_r3.agents.offline_models import ensure_model

    folder = tmp_path_factory.mktemp("vllm-train")
    process = VLLMProcess(
        ensure_model("tiny-idefics3", model_cache), served_name=SERVED, python=require_vllm(),
        max_loras=len(ROLES) + 1, max_lora_rank=LORA_RANK, runtime_lora_updating=True,
        log_path=folder / "server.log",
    )  # fmt: skip
    with process:
        assert process.log_path is not None
        yield Server(process.base_url, process.log_path)


class RecordingModel:
    """The trainer's vLLM ChatModel for one role, keeping each call's messages: real graph prompts to replay."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.prompts: list[list[ChatMessage]] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def adapter(self) -> str | None:
        return self.inner.adapter

    @property
    def supports_images(self) -> bool:
        return self.inner.supports_images

    async def chat(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, choices: list[str] | None = None
    ) -> Completion:
        self.prompts.append(messages)
        return await self.inner.chat(messages, sampling, choices=choices)

    async def check_ready(self) -> None:
        await self.inner.check_ready()


@dataclass
class Trained:
    """What the training run left: the trainer, and per step the served and in-process greedy answers per role."""

    trainer: LocalTrainer
    prompts: dict[str, list[ChatMessage]]
    base: dict[str, Completion]
    served: list[dict[str, Completion]] = field(default_factory=list)
    local: list[dict[str, Completion]] = field(default_factory=list)
    initial_b: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _dataset(root: Path, bundled: dict[str, Path]) -> Path:
    for label, name in IMAGES.items():
        (root / label).mkdir(parents=True)
        (root / label / f"{name}.png").write_bytes(bundled[name].read_bytes())
    return root


def _config(run_dir: Path, data: Path, base_url: str) -> TrainConfig:
    short = {"temperature": 1.0, "max_tokens": 8}
    return TrainConfig.load(
        {
            "run_dir": str(run_dir), "seed": 0, "steps": STEPS, "save_every": STEPS, "report_to": [],
            "data": {"kind": "fi", "path": str(data), "split": "all"},
            "graph": {
                "max_rounds": 0,
                "models": {"default": {"path": "offline:tiny-idefics3"}},
                "roles": {"perceiver": {"sampling": short}, "reasoner": {"sampling": short},
                          "reflector": {"sampling": short | {"max_tokens": 4}}},
            },
            # Default target modules (text model q/k/v/o, gate/up/down): vLLM's Idefics3 serves LoRA on all of them.
            "policy": {"mode": "lora", "train_roles": list(ROLES), "lora": {"rank": LORA_RANK}},
            "rollout": {"backend": "vllm", "base_url": base_url, "served_model": SERVED, "timeout_s": 120},
            # kl 0: no reference pass; lr 1e-2 so that two steps visibly move greedy answers of the random model.
            "algorithm": {"group_size": 4, "prompts_per_step": 1, "kl_coef": 0.0},
            "optim": {"lr": 1e-2},
        }
    )  # fmt: skip


async def _greedy(models: dict[str, ChatModel], prompts: dict[str, list[ChatMessage]]) -> dict[str, Completion]:
    return {role: await models[role].chat(prompts[role], GREEDY) for role in prompts}


def _served(base_url: str, adapter: str | None) -> VLLMChatModel:
    return VLLMChatModel(base_url, SERVED, adapter=adapter, timeout_s=120)


def _lora_b(trainer: LocalTrainer, role: str) -> dict[str, torch.Tensor]:
    params = trainer.policies.policies[role].parameters()
    named = {id(p): n for n, p in trainer.policies.policies[role].loaded.model.named_parameters()}
    return {named[id(p)]: p.detach().clone() for p in params if ".lora_B." in named[id(p)]}


@pytest.fixture(scope="module")
def trained(
    lora_server: Server, model_cache: Path, bundled_images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """Two training steps; after each (the trainer has synced by then) both sides answer the same prompts greedily."""
    folder = tmp_path_factory.mktemp("train-vllm")
    config = _config(folder / "run", _dataset(folder / "data", bundled_images), lora_server.base_url)
    trainer = LocalTrainer(config, cache_dir=model_cache)
    [models] = trainer.model_sets
    recorders = {role: RecordingModel(model) for role, model in models.items()}
    trainer.model_sets = [dict(recorders)]
    record = Trained(trainer, prompts={}, base={})
    record.initial_b = {role: _lora_b(trainer, role) for role in ROLES}
    base = _served(lora_server.base_url, None)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if not record.prompts:  # the first step's first prompt per role, replayed after every step
            record.prompts = {role: recorders[role].prompts[0] for role in ROLES}
            record.base = asyncio.run(_greedy(dict.fromkeys(ROLES, base), record.prompts))
        served = {role: _served(lora_server.base_url, role) for role in ROLES}
        record.served.append(asyncio.run(_greedy(dict(served), record.prompts)))
        record.local.append(asyncio.run(_greedy(dict(trainer.policies.chat_models), record.prompts)))

    trainer.train(on_step=on_step)
    return record


def test_rollouts_were_served_by_vllm_with_the_role_adapters(trained: Trained, lora_server: Server) -> None:
    trainer = trained.trainer
    store = TraceStore(trainer.run_dir / "traces.sqlite", readonly=True)
    trajectories = [run.result.trajectory for run in store.iter_runs()]
    store.close()
    assert trajectories and all(t is not None and t.termination not in ("error", "timeout") for t in trajectories)
    calls = [call for t in trajectories if t is not None for call in t.calls]
    assert len(calls) >= STEPS * trainer.config.algorithm.group_size * len(ROLES)
    assert {(c.model_id, c.adapter == c.role) for c in calls} == {(f"vllm:{SERVED}", True)}
    assert {c.role for c in calls} == set(ROLES)
    assert {c.weight_version for c in calls} == {f"step-{s}" for s in range(STEPS)}
    # The server now serves each role from the folder the trainer saved after its last step.
    cards = httpx.get(f"{lora_server.base_url}/v1/models", timeout=10).json()["data"]
    roots = {card["id"]: card["root"] for card in cards}
    last = trainer.run_dir / "served" / f"step-{STEPS:08d}"
    assert {role: roots.get(role) for role in ROLES} == {role: str((last / role).absolute()) for role in ROLES}


def test_training_changed_every_adapter_and_the_synced_files(trained: Trained) -> None:
    trainer = trained.trainer
    last = trainer.run_dir / "served" / f"step-{STEPS:08d}"
    for role in ROLES:
        initial, now = trained.initial_b[role], _lora_b(trainer, role)
        assert initial and all(not t.any() for t in initial.values()), f"{role}: LoRA B should start at zero"
        assert any(t.abs().max() > 1e-3 for t in now.values()), f"{role}: training did not move its adapter"
        saved = load_file(last / role / "adapter_model.safetensors")
        saved_b = {k: v for k, v in saved.items() if ".lora_B." in k}
        assert len(saved_b) == len(now) and any(v.abs().max() > 1e-3 for v in saved_b.values())


def test_served_adapters_answer_like_the_trainer_after_every_step(trained: Trained) -> None:
    assert len(trained.served) == len(trained.local) == STEPS
    for step in range(STEPS):
        for role in ROLES:
            served, local = trained.served[step][role], trained.local[step][role]
            where = f"step {step}, {role}"
            assert served.prompt_token_ids == local.prompt_token_ids, where
            assert served.completion_token_ids == local.completion_token_ids, where
            assert served.logprobs == pytest.approx(local.logprobs, abs=LOGPROB_ATOL), where


def test_the_comparison_would_catch_a_missed_reload(trained: Trained) -> None:
    """Each step moved every role's answer beyond the tolerance, so serving stale weights would fail the test above."""
    answers = [trained.base, *trained.local]  # base = the initial adapters (LoRA B = 0)
    for step in range(STEPS):
        for role in ROLES:
            before, after = answers[step][role], answers[step + 1][role]
            assert _differ(before, after), f"step {step} did not change {role}'s greedy answer; raise lr or steps"
    for role in ROLES:
        assert trained.base[role].completion_token_ids != trained.served[-1][role].completion_token_ids, role


def _differ(a: Completion, b: Completion) -> bool:
    if a.completion_token_ids != b.completion_token_ids:
        return True
    return max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) > 10 * LOGPROB_ATOL
