"""Roles on a model named by its Hugging Face Hub id, loaded from an HF cache with no network: in-process and
through the CLI (where HF_HOME / HF_HUB_CACHE are read as every Hugging Face user sets them)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from hub_cache import add_to_hub_cache, folder_files
from huggingface_hub import constants
from repo import EMO_R3

from emo_r3.agents.offline_models import ensure_model
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig

REPO = "emo-r3-test/tiny-idefics3"
GREEDY = {"temperature": 0.0, "max_tokens": 12}
ROLES = {role: {"sampling": GREEDY} for role in ("perceiver", "reasoner", "reflector")}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, str]:
    """An HF_HOME whose hub cache holds the tiny Idefics3 as `emo-r3-test/tiny-idefics3`; its commit hash."""
    home = tmp_path_factory.mktemp("hf-home")
    commit = add_to_hub_cache(home / "hub", REPO, folder_files(ensure_model("tiny-idefics3", model_cache)))
    return home, commit


def test_roles_on_a_hub_id_and_a_pinned_revision_generate_like_the_same_local_model(
    hub_home, model_cache, bundled_images, monkeypatch
):
    home, commit = hub_home
    # huggingface_hub read HF_HUB_CACHE at import; the value it reads at call time is redirected instead.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub = GraphConfig(
        models={"main": {"path": REPO}, "pinned": {"path": REPO, "revision": commit}},
        roles={role: ROLES[role] | {"model": "pinned" if role == "reasoner" else "main"} for role in ROLES},
        max_rounds=0,
    )
    local = GraphConfig(models={"default": {"path": "offline:tiny-idefics3"}}, roles=ROLES, max_rounds=0)
    query = EmotionQuery(images=[bundled_images["astronaut"]], text="first day at work")

    on_hub = EmotionGraph.from_config(hub, cache_dir=model_cache).run(query).raise_for_error()
    on_disk = EmotionGraph.from_config(local, cache_dir=model_cache).run(query).raise_for_error()

    calls = on_hub.trajectory.calls
    assert {call.role: call.model_id for call in calls} == {"perceiver": REPO, "reasoner": REPO, "reflector": REPO}
    assert all(call.completion_token_ids for call in calls)
    assert [c.completion_token_ids for c in calls] == [c.completion_token_ids for c in on_disk.trajectory.calls]
    assert on_hub.label == on_disk.label


def run_cli(config: dict, tmp_path: Path, image: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HF_HUB_CACHE")}
    args = ["run", str(image), "--config", str(path), "--json", "--no-traces", "--max-rounds", "0"]
    return subprocess.run(
        [*EMO_R3, *args], env=clean | {"HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True, timeout=300
    )


def test_cli_loads_a_hub_id_from_hf_home_and_names_a_missing_one(hub_home, tmp_path, bundled_images):
    home, commit = hub_home
    config = {"models": {"default": {"path": REPO, "revision": commit}}, "roles": ROLES}
    done = run_cli(config, tmp_path, bundled_images["coffee"], {"HF_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout)["trajectory"]["calls"]
    assert calls and {call["model_id"] for call in calls} == {REPO}

    missing = {"models": {"default": {"path": "emo-r3-test/not-downloaded", "revision": "v2"}}, "roles": ROLES}
    done = run_cli(missing, tmp_path, bundled_images["coffee"], {"HF_HUB_CACHE": str(home / "hub")})
    assert done.returncode == 2, done.stderr
    assert "model emo-r3-test/not-downloaded (revision v2) is not (completely) in the Hugging Face cache" in done.stderr
    assert "`hf download emo-r3-test/not-downloaded --revision v2`" in done.stderr
