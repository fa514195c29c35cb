"""Training reaches its vLLM server through the graph's own model spec: same API key, timeout, retries and clear
errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo_r3.agents.backends.vllm.adapters import AdapterSyncError, load_adapters
from emo_r3.agents.backends.vllm.chat import VLLMChatModel
from emo_r3.agents.backends.vllm.process import free_port
from emo_r3.agents.model_specs import ConfigError, VLLMModelSpec, load_chat_model
from emo_r3.training.config import RolloutConfig

SERVED = {"backend": "vllm", "base_url": "http://127.0.0.1:8000", "served_model": "base", "api_key_env": "VLLM_KEY"}


def test_each_role_is_a_graph_model_spec_of_the_same_server() -> None:
    retry = {"max_retries": 5, "backoff_s": 0.5, "backoff_cap_s": 4.0, "retry_budget_s": 20.0}
    rollout = RolloutConfig.model_validate({**SERVED, "timeout_s": 42.0, "retry": retry})
    spec = rollout.server("reasoner")
    assert spec == VLLMModelSpec(
        backend="vllm", base_url="http://127.0.0.1:8000", model="base", adapter="reasoner", api_key_env="VLLM_KEY",
        timeout_s=42.0, **retry,
    )  # fmt: skip
    model = load_chat_model(spec)
    assert isinstance(model, VLLMChatModel) and model.adapter == "reasoner" and model.model_id == "vllm:base"
    assert rollout.server().adapter is None


def test_a_server_without_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"rollout\.base_url and rollout\.served_model"):
        RolloutConfig(backend="vllm").server()


def test_adapter_sync_names_an_unset_key_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VLLM_KEY", raising=False)
    server = RolloutConfig.model_validate(SERVED).server()
    with pytest.raises(AdapterSyncError, match="api_key_env is VLLM_KEY, but that environment variable is not set"):
        load_adapters(server, {"reasoner": tmp_path})


def test_adapter_sync_to_a_dead_server_says_which_server_and_adapter(tmp_path: Path) -> None:
    server = VLLMModelSpec(backend="vllm", base_url=f"http://127.0.0.1:{free_port()}", model="base", timeout_s=5)
    with pytest.raises(AdapterSyncError, match=r"cannot reach the vLLM server at http://127\.0\.0\.1:\d+ .*'reasoner'"):
        load_adapters(server, {"reasoner": tmp_path})
