"""The `local` trainer end to end on CPU with the tiny offline model: reward rises in every role mode, training rows
are token-exact and carry pixels, each step is traced and logged, and a killed run resumes to the same numbers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from repo import ROOT, SUPPORT
from train_configs import tiny_train_config as train_config

from emo_r3.graphs.traces.store import TraceStore, TraceStoreError
from emo_r3.training.config import TrainConfig
from emo_r3.training.local_trainer import LocalTrainer


def rewards_of(history: list[dict[str, float]]) -> list[float]:
    return [round(step["reward/mean"], 4) for step in history]


@pytest.mark.parametrize(
    ("mode", "policy", "lr"),
    [
        ("shared", {}, 3e-3),
        # LoRA starts as the base model (B = 0) and moves through a rank-8 bottleneck: it takes a larger step size.
        ("lora", {"lora": {"rank": 8, "alpha": 16}}, 1e-2),
        ("separate", {"train_roles": ["reflector"]}, 1e-3),
    ],
)
def test_reward_rises_in_each_policy_mode(
    tmp_path: Path, one_image_dataset: Path, mode: str, policy: dict, lr: float
) -> None:
    config = train_config(
        tmp_path / mode, one_image_dataset, mode=mode, policy={"mode": mode, **policy}, optim={"lr": lr}
    )
    history = LocalTrainer(TrainConfig.load(config)).train()
    rewards = rewards_of(history)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last >= first + 0.25, f"{mode}: reward did not rise: {rewards}"


def test_each_step_is_traced_and_logged(tmp_path: Path, one_image_dataset: Path) -> None:
    """Rollouts land in the trace store with rewards, every training row points at a recorded call, and TensorBoard
    gets each step's scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = train_config(tmp_path / "run", one_image_dataset, mode="lora", steps=2, report_to=["tensorboard"])
    history = LocalTrainer(TrainConfig.load(config)).train()
    with TraceStore(tmp_path / "run" / "traces.sqlite", readonly=True) as store:
        runs = store.list_runs(limit=100)
        assert len(runs) == 2 * 8 and {run.source for run in runs} == {"train"}
        step = store.get_training_step("run", 1)
        assert step.metrics["reward/mean"] == pytest.approx(history[1]["reward/mean"])
        assert step.rows and {row.policy for row in step.rows} == {"perceiver", "reasoner", "reflector"}
        for row in step.rows:
            detail = store.get_run(row.run_id)
            call = detail.result.trajectory.calls[row.call_idx]
            assert call.role == row.policy and call.weight_version == "step-1"
            assert row.values["tokens"] == len(call.completion_token_ids)
            assert detail.rewards[call.role]["advantage"] == pytest.approx(row.advantage)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rewards = [event.value for event in events.Scalars("reward/mean")]
    assert rewards == pytest.approx([h["reward/mean"] for h in history])
    assert {"loss", "pg/clip_frac", "grad_norm/reflector"} <= set(events.Tags()["scalars"])


def test_a_dead_rollout_server_is_reported_before_any_step(tmp_path: Path, one_image_dataset: Path) -> None:
    from emo_r3.agents.backends.vllm.process import free_port

    rollout = {"backend": "vllm", "base_url": f"http://127.0.0.1:{free_port()}", "served_model": "tiny"}
    config = train_config(tmp_path / "run", one_image_dataset, mode="lora", rollout=rollout)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}
    result = subprocess.run(_train_command(path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "cannot reach the vLLM server" in result.stderr and "Traceback" not in result.stderr


def test_an_invalid_config_names_the_field(tmp_path: Path, one_image_dataset: Path) -> None:
    config = train_config(tmp_path / "run", one_image_dataset, mode="shared", algorithm={"group_size": 1})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(_train_command(path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "algorithm.group_size" in result.stderr and "Traceback" not in result.stderr


def _train_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "emo_r3.graphs.cli", "train", "--config", str(config_path), "--no-progress"]


def _step_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """Each step's metrics from the trace store, without wall-clock timings."""
    with TraceStore(run_dir / "traces.sqlite", readonly=True) as store:
        steps = store.list_training_steps()
    return {s.step: {k: v for k, v in s.metrics.items() if not k.startswith("time/")} for s in steps}


def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path, one_image_dataset: Path) -> None:
    """kill -9 after a checkpoint and one more step; the resumed run's later steps equal an uninterrupted run's."""
    env = {**os.environ, "PYTHONPATH": str(SUPPORT)}  # the reward function lives in tests/support/train_rewards.py
    # One call at a time: batched rollouts sample the same tokens, but which calls share a batch is a matter of
    # timing, and it moves logprobs (hence losses) by float noise. Resume is exact; batching is tested on its own.
    models = {"default": {"path": "offline:tiny-idefics3", "batching": {"max_size": 1}}}
    overrides = {"steps": 5, "save_every": 2, "algorithm": {"group_size": 4}, "graph": {"models": models}}
    paths = {}
    for name in ("straight", "killed"):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(
            yaml.safe_dump(train_config(tmp_path / name, one_image_dataset, mode="shared", **overrides))
        )

    subprocess.run(_train_command(paths["straight"]), env=env, check=True, capture_output=True, timeout=600)

    process = subprocess.Popen(
        _train_command(paths["killed"]), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while (
        not (tmp_path / "killed" / "checkpoints" / "latest").exists() or len(_metrics_or_empty(tmp_path / "killed")) < 3
    ):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = (tmp_path / "killed" / "checkpoints" / "latest").read_text()
    assert checkpoint == "step-00000002", checkpoint

    resumed = subprocess.run(_train_command(paths["killed"]), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "at step 2" in resumed.stderr

    straight, killed = _step_metrics(tmp_path / "straight"), _step_metrics(tmp_path / "killed")
    assert sorted(killed) == sorted(straight) == [0, 1, 2, 3, 4]
    for step in (2, 3, 4):
        assert killed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-9), f"step {step} differs after resume"
    assert len({json.dumps(straight[s], sort_keys=True) for s in straight}) == 5  # the steps really differ


def _metrics_or_empty(run_dir: Path) -> dict[int, dict[str, float]]:
    try:
        return _step_metrics(run_dir)
    except (TraceStoreError, sqlite3.Error):  # the training process is still creating the store
        return {}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("train-*.yaml")), ids=lambda p: p.name)
def test_shipped_training_configs_validate(path: Path) -> None:
    config = TrainConfig.load(path)
    assert config.run_dir.is_absolute() and config.data.path.is_absolute()  # resolved against the file


def test_the_readme_training_command_runs(tmp_path: Path) -> None:
    """`emo-r3 train --config configs/train-tiny.yaml` on the bundled pictures, cut to one step."""
    command = [*_train_command(ROOT / "configs" / "train-tiny.yaml"), "--steps", "1", "--run-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000001"
    assert (tmp_path / "adapters").exists() is False  # in-process rollouts: nothing to push to a server
