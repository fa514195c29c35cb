"""`trainer: openrlhf` end to end, the way Ray users run it: a Ray cluster from `ray start --head` (fake GPUs, gloo),
real CPU vLLM servers, two DeepSpeed ranks per policy group, the tiny Idefics3 and a verifiable reward.

* shared mode through `ray job submit --working-dir`: the driver starts its vLLM server on the cluster, reloads the
  full weights into it after every step, and the mean reward rises; traces and TensorBoard as `local` writes them.
* lora mode through `emo-r3 train` with RAY_ADDRESS, on a server given by URL that reloads a group's adapter per
  trained role: a run killed with SIGKILL after a checkpoint resumes to the same steps, and the reward rises.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray_cluster import RUNTIME_ENV, RayCluster
from train_configs import tiny_train_config
from vllm_server import require_vllm

from emo_r3.agents.backends.vllm.process import VLLMProcess
from emo_r3.graphs.traces.store import TraceStore, TraceStoreError

pytestmark = pytest.mark.timeout(1200)

SERVED = "tiny"
STEPS = 8
LORA_ROLES = ["reasoner", "reflector"]  # two policy groups of two ranks


def train_config(run_dir: Path, data: Path, *, mode: str, rollout: dict, **overrides: object) -> dict:
    """The trainer tests' tiny config (`train_configs`) on the cluster: two ranks per group, float32, no KL term."""
    cluster = {"runtime_env": RUNTIME_ENV, "gpus_per_policy": 2, "param_dtype": "fp32", "adam_offload": True}
    return tiny_train_config(
        run_dir, data, mode=mode, trainer="openrlhf", steps=STEPS, report_to=["tensorboard"],
        rollout={"backend": "vllm", "timeout_s": 120, **rollout}, algorithm={"kl_coef": 0.0},
        # A large step: rewards on vLLM's sampling streams move slowly at the local tests' 3e-3 (same numbers with
        # `local` and vLLM rollouts: the trainers agree), and the run must show a clear rise in 8 steps.
        optim={"lr": 2e-2}, cluster=cluster, **overrides,
    )  # fmt: skip


def step_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """Each step's metrics from the trace store, without wall-clock timings."""
    try:
        with TraceStore(run_dir / "traces.sqlite", readonly=True) as store:
            steps = store.list_training_steps()
    except (TraceStoreError, sqlite3.Error):  # the training process is still creating the store
        return {}
    return {s.step: {k: v for k, v in s.metrics.items() if not k.startswith("time/")} for s in steps}


def assert_reward_rose(run_dir: Path) -> None:
    metrics = step_metrics(run_dir)
    rewards = [round(metrics[step]["reward/mean"], 4) for step in sorted(metrics)]
    assert len(rewards) == STEPS
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last >= first + 0.25, f"reward did not rise: {rewards}"


def assert_served_the_trained_weights(run_dir: Path) -> None:
    """At every step the server sampled with the policy's weights of that step: on every freely sampled row its
    logprobs equal the trainer's π_old on the same tokens (float32 vLLM CPU and torch agree to ~1e-5; a missed sync
    at these step sizes is off by far more). The reflector's closed-set answers are left out: vLLM reports their
    logprobs renormalised over the allowed choices."""
    with TraceStore(run_dir / "traces.sqlite", readonly=True) as store:
        steps = store.list_training_steps()
        assert len(steps) == STEPS
        for summary in steps:
            rows = store.get_training_step(summary.run_name, summary.step).rows
            free = [row for row in rows if _role(store, row.run_id, row.call_idx) != "reflector"]
            assert free, f"step {summary.step} has no freely sampled rows"
            for row in free:
                gap = abs(row.values["logprob_mean"] - row.values["rollout_logprob_mean"])
                assert gap < 1e-3, f"step {summary.step}: served and trained logprobs differ by {gap}"


def _role(store: TraceStore, run_id: str, call_idx: int) -> str:
    return store.get_run(run_id).result.trajectory.calls[call_idx].role


def train_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emo_r3.graphs.cli", "train", "--config", str(config), "--no-progress", *extra]


def vllm_processes(served_name: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if "vllm" in line and f"--served-model-name {served_name}" in line]


def test_ray_job_submit_trains_shared_weights_on_a_launched_server(
    ray_cluster: RayCluster, one_image_dataset: Path, tmp_path: Path
) -> None:
    job_dir, run_dir = tmp_path / "job", tmp_path / "run"
    job_dir.mkdir()
    launch = {"python": str(require_vllm()), "dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
    config = train_config(run_dir, one_image_dataset, mode="shared", rollout={"launch": launch})
    (job_dir / "train.yaml").write_text(yaml.safe_dump(config))
    submit = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url,
        "--working-dir", str(job_dir), "--", "emo-r3", "train", "--config", "train.yaml", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(submit, env=ray_cluster.env, capture_output=True, text=True, timeout=1100)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in output, output[-4000:]
    assert f"step {STEPS}: reward" in output

    assert_reward_rose(run_dir)
    assert_served_the_trained_weights(run_dir)
    with TraceStore(run_dir / "traces.sqlite", readonly=True) as store:
        step = store.get_training_step("run", 1)
        assert {"time/rollout_s", "time/forward_s", "time/fit_s", "time/sync_s"} <= set(step.metrics)
        assert step.rows and {row.policy for row in step.rows} == {"shared"}
        for row in step.rows:
            call = store.get_run(row.run_id).result.trajectory.calls[row.call_idx]
            assert call.weight_version == "step-1" and row.values["tokens"] == len(call.completion_token_ids)
    assert (run_dir / "checkpoints" / "driver" / "latest").read_text() == f"step-{STEPS:08d}"
    assert not vllm_processes("emo-r3-shared"), "the launched vLLM server outlived the job"


@dataclass(frozen=True)
class LoraServer:
    base_url: str


@pytest.fixture(scope="module")
def lora_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraServer]:
    from emo_r3.agents.offline_models import ensure_model

    process = VLLMProcess(
        ensure_model("tiny-idefics3", model_cache), served_name=SERVED, python=require_vllm(),
        max_loras=len(LORA_ROLES) + 1, max_lora_rank=8, runtime_lora_updating=True,
        log_path=tmp_path_factory.mktemp("vllm-lora") / "server.log",
    )  # fmt: skip
    with process:
        yield LoraServer(process.base_url)


def test_lora_groups_train_from_ray_address_and_a_killed_driver_resumes(
    ray_cluster: RayCluster, lora_server: LoraServer, one_image_dataset: Path, tmp_path: Path
) -> None:
    """A run killed (SIGKILL) after its step-3 checkpoint and two more steps, then started again with the same
    command: it redoes steps 3 and 4 with the same numbers (weights, optimizer state and sampling streams restored)
    and goes on to the end, where the reward has risen and every step served the weights it trained."""
    run_dir = tmp_path / "run"
    config = train_config(
        run_dir, one_image_dataset, mode="lora", save_every=3,
        rollout={"base_url": lora_server.base_url, "served_model": SERVED},
        # alpha 64: LoRA's B starts at 0 and moves through a rank-8 bottleneck; a larger scale shows the rise sooner
        policy={"mode": "lora", "train_roles": LORA_ROLES, "lora": {"rank": 8, "alpha": 64, "dropout": 0.0}},
    )  # fmt: skip
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address}

    process = subprocess.Popen(train_command(config_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "checkpoints" / "driver" / "latest"
    deadline = time.monotonic() + 900
    while not latest.exists() or len(step_metrics(run_dir)) < 5:
        assert process.poll() is None, process.stderr.read().decode()[-4000:] if process.stderr else ""
        assert time.monotonic() < deadline, "the run never reached step 5"
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert latest.read_text() == "step-00000003"
    before_kill = step_metrics(run_dir)

    resumed = subprocess.run(train_command(config_path), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stderr and "at step 3" in resumed.stderr

    after = step_metrics(run_dir)
    assert sorted(after) == list(range(STEPS))
    for step in (3, 4):
        assert after[step]["reward/mean"] == before_kill[step]["reward/mean"], f"step {step}"
        assert after[step] == pytest.approx(before_kill[step], rel=1e-3, abs=1e-6), f"step {step} differs after resume"
    assert_reward_rose(run_dir)
    assert_served_the_trained_weights(run_dir)
