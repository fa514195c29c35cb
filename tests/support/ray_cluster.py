"""A real Ray cluster for the cluster-training tests: `ray start --head` with fake GPUs, the way Ray users start one,
torn down at the end of the session.

Its processes have the OpenRLHF CPU stand-ins on PYTHONPATH (`openrlhf_cpu/`: import stand-ins for flash-attn and
vLLM, and the CPU patch Ray's `worker_process_setup_hook` applies in every worker), and `RUNTIME_ENV` is what a
training config's `cluster.runtime_env` needs to run OpenRLHF's actors on CPU with gloo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from repo import SUPPORT

from emo_r3.agents.backends.vllm.process import free_port

RAY = Path(sys.executable).parent / "ray"  # the ray command of the environment the tests run in
# Fake GPUs (Ray only counts them): a policy group's ranks, its reference's, and launched vLLM servers.
GPUS = 8
CPUS = 16
STAND_INS = SUPPORT / "openrlhf_cpu"
RUNTIME_ENV = {"env_vars": {"DS_ACCELERATOR": "cpu"}, "worker_process_setup_hook": "openrlhf_cpu.apply"}


@dataclass(frozen=True)
class RayCluster:
    address: str  # the GCS address drivers connect to (RAY_ADDRESS)
    dashboard_url: str  # the jobs API (`ray job submit --address`)
    env: dict[str, str]  # an environment for drivers and `ray` commands: the stand-ins on PYTHONPATH
    log_dir: Path


def driver_env() -> dict[str, str]:
    """This process's environment with the CPU stand-ins and the test helpers on PYTHONPATH, and this environment's
    commands (`emo-r3`, `ray`) on PATH, as in an activated virtual environment."""
    paths = [str(STAND_INS), str(SUPPORT)]
    executables = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {
        **os.environ, "PYTHONPATH": os.pathsep.join(paths), "PATH": executables, "RAY_USAGE_STATS_ENABLED": "0",
    }  # fmt: skip


def _ready(dashboard_url: str) -> bool:
    try:
        return httpx.get(f"{dashboard_url}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(head: subprocess.Popen[bytes]) -> None:
    """`ray start --block` stops the cluster's processes when it gets SIGTERM; whatever is left is killed."""
    with_group = os.getpgid(head.pid)
    head.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(with_group, signal.SIGKILL)


def use_stand_ins() -> None:
    """This process imports OpenRLHF too: the stand-ins at the end of its path, where sitecustomize puts them in the
    cluster's processes (a real flash-attn or vLLM, if installed, still wins)."""
    for folder in (STAND_INS, STAND_INS / "stand_ins"):
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    use_stand_ins()
    # A short temp dir: Ray's socket paths live under it and must stay below the 107-byte limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, dashboard_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    env = driver_env()
    command = [
        str(RAY), "start", "--head", "--block", f"--port={port}", f"--num-gpus={GPUS}", f"--num-cpus={CPUS}",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    log = (temp_dir / "head.log").open("wb")
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cluster = RayCluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", env, temp_dir)
    try:
        deadline = time.monotonic() + 120
        while not _ready(cluster.dashboard_url):
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head failed:\n{(temp_dir / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        yield cluster
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
