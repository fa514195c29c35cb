"""OpenRLHF's policy and reference actors on CPU, for tests: Ray's `worker_process_setup_hook` runs `apply()` in
every worker before it hosts an actor.

OpenRLHF 0.11 calls CUDA unconditionally (`torch.cuda.set_device`, `init_device_mesh("cuda")`, the replay buffer's
device); here those run on the CPU, with DeepSpeed's CPU accelerator and gloo. The shipped trainer has none of this:
on a GPU cluster OpenRLHF runs as it is.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def apply() -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.cuda.set_device = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: "cpu"  # DeepSpeed and OpenRLHF move tensors to this "device"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    _cpu_device_mesh()
    _cpu_replay_buffer()
    _pil_processors()


def _cpu_device_mesh() -> None:
    import openrlhf.utils.deepspeed.deepspeed as strategy
    from torch.distributed.device_mesh import init_device_mesh

    strategy.init_device_mesh = lambda device_type, *args, **kwargs: init_device_mesh("cpu", *args, **kwargs)


def _cpu_replay_buffer() -> None:
    from openrlhf.trainer.ppo_utils import replay_buffer

    init = replay_buffer.NaiveReplayBuffer.__init__

    def cpu_init(self: Any, *args: Any, **kwargs: Any) -> None:
        torch.cuda.current_device = lambda: 0  # read as an index by the buffer's constructor
        try:
            init(self, *args, **kwargs)
        finally:
            torch.cuda.current_device = lambda: "cpu"
        self.target_device = torch.device("cpu")

    replay_buffer.NaiveReplayBuffer.__init__ = cpu_init


def _pil_processors() -> None:
    """OpenRLHF loads a VLM's processor with `AutoProcessor`, whose Qwen2-VL video processor needs torchvision (not
    installable beside the CPU torch); the project's PIL-only processors stand in for it."""
    import json
    from pathlib import Path

    import transformers

    from emo_r3.agents.backends.transformers.processors import IMAGE_TEXT_PROCESSORS, load_processor

    original = transformers.AutoProcessor.from_pretrained

    def from_pretrained(path: str, *args: Any, **kwargs: Any) -> Any:
        config = Path(path) / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        if model_type in IMAGE_TEXT_PROCESSORS:
            return load_processor(Path(path), model_type)
        return original(path, *args, **kwargs)

    transformers.AutoProcessor.from_pretrained = from_pretrained
