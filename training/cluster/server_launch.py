"""vLLM servers started on the Ray cluster: one small Ray actor per server, holding its GPU bundle and running
`vllm serve` (the project's `VLLMProcess`) on that node. The graph then reaches each over HTTP, as any server."""

from __future__ import annotations

from pathlib import Path

import ray

from emo_r3.agents.backends.vllm.process import VLLMProcess
from emo_r3.training.config import ServedPolicy, ServerLaunch


@ray.remote(num_cpus=1)
class VLLMServerActor:
    """Runs one vLLM server on its node until stopped (or until the actor dies with the driver)."""

    def __init__(self, process: VLLMProcess, ready_timeout_s: float) -> None:
        self.process = process
        self.ready_timeout_s = ready_timeout_s

    def start(self) -> str:
        """Start the server, wait for /health and warm it up; its base URL on this node."""
        self.process.host = ray.util.get_node_ip_address()
        self.process.start()
        try:
            self.process.wait_ready(self.ready_timeout_s)
            self.process.warm_up()
        except BaseException:
            self.process.stop()
            raise
        return self.process.base_url

    def stop(self) -> int | None:
        return self.process.stop()


def launch_servers(
    launch: ServerLaunch, model_dir: Path, served_name: str, roles: list[str], *, lora_slots: int, rank: int
) -> tuple[list[ServedPolicy], list[ray.actor.ActorHandle]]:
    """`launch.count` servers of `model_dir` as `served_name` for `roles`; in lora mode with runtime adapter loading
    (`lora_slots` adapters), else with in-place weight reloading (dev mode). Returns them and their actors."""
    process = VLLMProcess(
        model_dir, served_name=served_name, python=launch.python, max_loras=lora_slots or None, max_lora_rank=rank,
        runtime_lora_updating=bool(lora_slots), dev_mode=not lora_slots, dtype=launch.dtype,
        max_model_len=launch.max_model_len, enforce_eager=launch.enforce_eager,
        extra_args=[*launch.extra_args, "--tensor-parallel-size", str(launch.gpus)], env=launch.env,
        die_with_parent=True,
    )  # fmt: skip
    actors = [
        VLLMServerActor.options(num_gpus=launch.gpus).remote(process, launch.ready_timeout_s)
        for _ in range(launch.count)
    ]
    urls = ray.get([actor.start.remote() for actor in actors])
    return [ServedPolicy(base_url=url, served_model=served_name, roles=roles) for url in urls], actors
