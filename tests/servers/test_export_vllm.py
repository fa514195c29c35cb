"""`emo-r3 export` of a shared-mode run, served by a real vLLM CPU server: the served folder answers a prompt with
the same greedy tokens as the trainer's own policy in-process, and not like the model training started from.

The server is this module's own: it serves the exported folder, which the session's `vllm_server` cannot load.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from train_configs import tiny_train_config
from vllm_server import require_vllm

from emo_r3.agents.backends.vllm.chat import VLLMChatModel
from emo_r3.agents.backends.vllm.process import VLLMProcess
from emo_r3.agents.chat_model import ChatMessage, ChatModel, Completion, SamplingParams
from emo_r3.agents.images import prepare_image
from emo_r3.agents.model_specs import TransformersModelSpec, load_chat_model
from emo_r3.training.config import TrainConfig
from emo_r3.training.local_trainer import LocalTrainer

SERVED = "exported"
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
LOGPROB_ATOL = 1e-3  # vLLM CPU and transformers agree to ~1e-6 in float32

pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Answers:
    served: Completion  # the exported folder on vLLM
    trained: Completion  # the trainer's policy, in-process
    initial: Completion  # the model training started from, in-process


def _greedy(model: ChatModel, prompt: list[ChatMessage]) -> Completion:
    return asyncio.run(model.chat(prompt, GREEDY))


@pytest.fixture(scope="module")
def answers(
    tmp_path_factory: pytest.TempPathFactory,
    one_image_dataset: Path,
    bundled_images: dict[str, Path],
    model_cache: Path,
) -> Answers:
    """One shared-mode step, `emo-r3 export` as a user runs it, then the exported folder served by vLLM."""
    folder = tmp_path_factory.mktemp("export-vllm")
    config = tiny_train_config(folder / "run", one_image_dataset, mode="shared", steps=1)
    trainer = LocalTrainer(TrainConfig.load(config), cache_dir=model_cache)
    trainer.train()
    command = [sys.executable, "-m", "emo_r3.graphs.cli", "export", str(folder / "run"), "--out", str(folder / "out")]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert json.loads((folder / "out" / "export.json").read_text())["policies"]["shared"]["folder"] == "shared"

    prompt = [ChatMessage.user("How does this picture make you feel?", (prepare_image(bundled_images["rocket"]),))]
    trained = _greedy(trainer.policies.chat_models["reasoner"], prompt)
    initial_model = load_chat_model(TransformersModelSpec(path="offline:tiny-idefics3"), cache_dir=model_cache)
    initial = _greedy(initial_model, prompt)
    process = VLLMProcess(
        folder / "out" / "shared", served_name=SERVED, python=require_vllm(), log_path=folder / "server.log"
    )
    with process:  # started, ready and warmed up
        served = _greedy(VLLMChatModel(process.base_url, SERVED, timeout_s=120), prompt)
    return Answers(served, trained, initial)


def test_the_served_export_answers_like_the_trained_policy(answers: Answers) -> None:
    served, trained = answers.served, answers.trained
    assert served.prompt_token_ids == trained.prompt_token_ids  # same tokenizer, chat template and image tokens
    assert served.completion_token_ids == trained.completion_token_ids
    assert served.logprobs == pytest.approx(trained.logprobs, abs=LOGPROB_ATOL)


def test_training_changed_the_answer_so_the_comparison_can_fail(answers: Answers) -> None:
    """Serving the initial weights (an export that lost the training) would fail the test above."""
    assert answers.initial.completion_token_ids != answers.trained.completion_token_ids
