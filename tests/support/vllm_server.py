"""Session fixture: one real vLLM server (CPU build, `.venv-vllm`) serving tiny-idefics3 and three role adapters.

Loaded as a pytest plugin from conftest (`pytest_plugins = ["vllm_server"]`); heavy imports happen only when a
test asks for `vllm_server`, so sessions without vLLM tests never build adapters or start the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo import ROOT

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SERVED_NAME = "tiny"
ROLE_ADAPTER_SEEDS = {"perceiver": 1, "reasoner": 2, "reflector": 3}
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class VLLMServer:
    """What tests need to talk to the running server and to reproduce its models in-process."""

    base_url: str
    model: str
    model_dir: Path
    adapters: dict[str, Path]
    log_path: Path
    pid: int


def require_vllm() -> Path:
    """The interpreter of `.venv-vllm`; fails the test, saying how to install it, when it is missing."""
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"vLLM is not installed at {VLLM_PYTHON}: run `bash scripts/setup.sh` (CI does) to create it")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def vllm_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    require_vllm()
    from emo_r3.agents.backends.vllm.process import VLLMProcess, VLLMProcessError
    from emo_r3.agents.offline_models import ensure_model
    from emo_r3.agents.offline_models.lora import build_lora_adapter

    model_dir = ensure_model("tiny-idefics3", model_cache)
    folder = tmp_path_factory.mktemp("vllm")
    adapters = {
        role: build_lora_adapter(model_dir, folder / f"lora-{role}", seed=seed)
        for role, seed in ROLE_ADAPTER_SEEDS.items()
    }
    process = VLLMProcess(
        model_dir, served_name=SERVED_NAME, python=VLLM_PYTHON, lora_modules=adapters, log_path=folder / "server.log"
    )
    try:
        process.start()
        process.wait_ready(READY_TIMEOUT_S)
        process.warm_up()
    except BaseException as error:
        process.stop()
        if isinstance(error, VLLMProcessError):
            pytest.fail(str(error), pytrace=False)
        raise
    assert process.pid is not None and process.log_path is not None
    try:
        yield VLLMServer(process.base_url, SERVED_NAME, model_dir, adapters, process.log_path, process.pid)
    finally:
        process.stop()
