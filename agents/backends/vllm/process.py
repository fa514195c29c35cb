"""Run a local vLLM OpenAI-compatible server as a child process: build its command line, wait until it is
healthy, warm it up, and stop it by its pid. Used by the integration tests and benchmarks, and by hand:

    with VLLMProcess(model_dir, served_name="tiny", python=".venv-vllm/bin/python") as server:
        spec = {"backend": "vllm", "base_url": server.base_url, "model": "tiny"}
        graph = EmotionGraph.from_config({"models": {"v": spec}, "roles": {...}})

The server runs in its own process group, so the engine processes it spawns are stopped with it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

RUNTIME_LORA_UPDATING = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
DEV_MODE = "VLLM_SERVER_DEV_MODE"
# The CPU build's defaults (ignored by GPU builds): a 2 GiB KV cache, offline, runtime LoRA updates allowed.
DEFAULT_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "HF_HUB_OFFLINE": "1",
    RUNTIME_LORA_UPDATING: "1",
}


class VLLMProcessError(RuntimeError):
    """The server could not be started or did not become ready; the message carries the end of its log."""


@dataclass
class VLLMProcess:
    """One `vllm.entrypoints.openai.api_server` process serving `model_dir` as `served_name`.

    `lora_modules` maps adapter names to PEFT folders (`--lora-modules NAME=DIR`); requests address an
    adapter by its name. `max_loras` turns LoRA on even without initial adapters, for adapters loaded at runtime
    (`/v1/load_lora_adapter`, which needs `runtime_lora_updating`). `python` is the interpreter of the environment
    vLLM is installed in.
    """

    model_dir: Path
    served_name: str
    python: str | Path = sys.executable
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port, chosen at start
    lora_modules: Mapping[str, Path] = field(default_factory=dict)
    # LoRA slots; None: one more than `lora_modules` (LoRA off without them). Count adapters loaded at runtime too,
    # plus one: see command() for why the CPU build needs the spare slot.
    max_loras: int | None = None
    max_lora_rank: int = 8
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, which adds /v1/load_lora_adapter; False removes it (the endpoint 404s).
    runtime_lora_updating: bool = True
    # VLLM_SERVER_DEV_MODE=1: the routes that reload full weights in place (and arbitrary RPC: loopback only).
    dev_mode: bool = False
    max_model_len: int = 2048
    images_per_prompt: int = 2
    dtype: str = "float32"
    # CUDA graphs off: the CPU build has none, and tests start faster; a GPU server serves faster with them.
    enforce_eager: bool = True
    # Off by default: in the CPU build (0.32) a seeded request whose prefill is split over two steps kills the
    # engine ("CPU Generator does not use offset"), which a burst of seeded requests over the token budget does.
    chunked_prefill: bool = False
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None  # None: a temporary file, kept after stop for post-mortems
    # Linux: the server gets SIGTERM when the process that started it dies, even by SIGKILL (a Ray actor that runs it
    # dies with its driver; the server must not outlive it holding a GPU).
    die_with_parent: bool = False
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise VLLMProcessError("the server has no port yet; call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def served_names(self) -> list[str]:
        """The base model's name and every adapter's: what `/v1/models` lists once the server is ready."""
        return [self.served_name, *self.lora_modules]

    def command(self) -> list[str]:
        if self.port is None:
            raise VLLMProcessError("choose a port before building the command (start() picks a free one)")
        command = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", self.served_name,
            "--host", self.host, "--port", str(self.port),
            "--dtype", self.dtype, "--max-model-len", str(self.max_model_len),
            "--limit-mm-per-prompt", f'{{"image": {self.images_per_prompt}}}',
        ]  # fmt: skip
        if self.enforce_eager:
            command.append("--enforce-eager")
        if not self.chunked_prefill:
            command.append("--no-enable-chunked-prefill")
        if self.lora_modules or self.max_loras is not None:
            # One slot more than adapters: the CPU build (0.32) gives a base-model request batched with LoRA
            # requests the adapter in the last slot when every slot is taken.
            slots = self.max_loras if self.max_loras is not None else len(self.lora_modules) + 1
            command += ["--enable-lora", "--max-loras", str(slots), "--max-lora-rank", str(self.max_lora_rank)]
        if self.lora_modules:
            command += ["--lora-modules", *(f"{name}={folder}" for name, folder in self.lora_modules.items())]
        return [*command, *self.extra_args]

    def environment(self) -> dict[str, str]:
        """This process's environment, the CPU defaults where it sets none, then `env` on top; without
        `runtime_lora_updating`, VLLM_ALLOW_RUNTIME_LORA_UPDATING is removed whatever set it."""
        defaults = {**DEFAULT_ENV, "VLLM_CPU_OMP_THREADS_BIND": _cpu_list()}
        environment = {**defaults, **os.environ, **self.env}
        if not self.runtime_lora_updating:
            environment.pop(RUNTIME_LORA_UPDATING, None)
        if self.dev_mode:
            environment[DEV_MODE] = "1"
        return environment

    def start(self) -> VLLMProcess:
        if self._process is not None and self._process.poll() is None:
            raise VLLMProcessError(f"the server is already running (pid {self._process.pid})")
        if not Path(self.python).is_file():
            raise VLLMProcessError(f"no Python interpreter at {self.python} (the environment vLLM is installed in)")
        self.port = self.port or free_port(self.host)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"vllm-{self.served_name}-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), start_new_session=True,
                preexec_fn=_terminate_with_parent if self.die_with_parent else None,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Poll `/health` until it answers 200; fail early, with the log's tail, if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._require_process().poll()
            if code is not None:
                raise VLLMProcessError(f"the vLLM server exited with code {code} before it was ready\n{self._tail()}")
            if _healthy(self.base_url):
                return
            time.sleep(0.5)
        raise VLLMProcessError(f"the vLLM server was not ready within {timeout_s:.0f} s\n{self._tail()}")

    def warm_up(self, timeout_s: float = 120.0) -> None:
        """One short request (with an image when images are allowed) per served name: the first logprobs
        request and the first use of each adapter cost seconds once, which should not land in a test or timing."""
        content: list[dict[str, Any]] = [{"type": "text", "text": "Hello"}]
        if self.images_per_prompt:
            content.insert(0, {"type": "image_url", "image_url": {"url": _tiny_png_url()}})
        with httpx.Client(timeout=timeout_s) as client:
            for name in self.served_names:
                body = {
                    "model": name, "messages": [{"role": "user", "content": content}], "temperature": 0.0,
                    "max_completion_tokens": 2, "logprobs": True, "return_token_ids": True,
                }  # fmt: skip
                response = client.post(f"{self.base_url}/v1/chat/completions", json=body)
                if response.status_code != 200:
                    raise VLLMProcessError(
                        f"warm-up request to {name!r} failed: HTTP {response.status_code}: {response.text[:300]}"
                    )

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the server, wait, then SIGKILL its process group; returns the exit code (None if never run)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(10)
        _kill_group(process.pid)  # engine processes left behind by a crashed or killed server
        return process.returncode

    def __enter__(self) -> VLLMProcess:
        self.start()
        try:
            self.wait_ready()
            self.warm_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise VLLMProcessError("the server was not started; call start() first")
        return self._process

    def _tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"last {len(text)} lines of {self.log_path}:\n" + "\n".join(text)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's choice); another process could still take it before we bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _kill_group(pgid: int) -> None:
    # The server leads its own session (start_new_session), so its group id is its pid: only its own processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _cpu_list() -> str:
    """The CPUs this process may use, as vLLM's CPU build wants them bound (`0-1`, or `0,2,5`)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def _tiny_png_url() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 96, 64)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _terminate_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
