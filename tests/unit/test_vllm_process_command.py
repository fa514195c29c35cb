"""How the trainer starts its own vLLM server: the command line and environment for runtime LoRA loading."""

from __future__ import annotations

from pathlib import Path

from emo_r3.agents.backends.vllm.process import RUNTIME_LORA_UPDATING, VLLMProcess

SERVED = "tiny"


def test_server_command_for_runtime_lora_loading(tmp_path: Path) -> None:
    process = VLLMProcess(tmp_path, served_name=SERVED, port=8123, max_loras=4, runtime_lora_updating=False)
    command = process.command()
    assert command[command.index("--max-loras") + 1] == "4" and "--enable-lora" in command
    assert "--lora-modules" not in command
    assert RUNTIME_LORA_UPDATING not in process.environment()
    assert VLLMProcess(tmp_path, served_name=SERVED).environment()[RUNTIME_LORA_UPDATING] == "1"
