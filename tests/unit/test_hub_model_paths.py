"""`path` as a Hugging Face Hub id: told apart from folders and offline kinds, found in the HF cache offline."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_cache import add_to_hub_cache
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects
from pydantic import ValidationError

from emo_r3.agents.hub_models import IGNORED_FILES, is_hub_id
from emo_r3.agents.model_specs import ConfigError, TransformersModelSpec, resolve_model_dir

REPO = "emo-r3-test/tiny-model"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache, offline. huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE once, at import, so the
    constants it reads at call time are redirected (the CLI test sets the variables in a fresh process instead)."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize(
    ("path", "hub"),
    [
        ("Qwen/Qwen2.5-VL-3B-Instruct", True),
        ("HuggingFaceTB/SmolVLM-256M-Instruct", True),
        ("offline:tiny-idefics3", False),
        ("./Qwen/Qwen2.5-VL-3B-Instruct", False),
        ("/models/Qwen2.5-VL-3B-Instruct", False),
        ("~/models/qwen", False),
        ("../org/name", False),
        ("gpt2", False),  # one word is a folder name; Hub models are named org/name
        ("org/name/sub", False),
        ("org/bad name", False),
        ("org/bad--name", False),
        ("C:/models", False),
    ],
)
def test_hub_ids_are_org_slash_name_and_never_paths(path: str, hub: bool) -> None:
    assert is_hub_id(path) is hub


def test_an_existing_relative_folder_wins_over_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Qwen" / "Qwen2.5-VL-3B-Instruct").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("Qwen/Qwen2.5-VL-3B-Instruct")
    assert resolve_model_dir("Qwen/Qwen2.5-VL-3B-Instruct") == Path("Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(ConfigError, match="applies only to a Hugging Face Hub id"):
        resolve_model_dir("Qwen/Qwen2.5-VL-3B-Instruct", revision="main")


def test_a_missing_path_is_a_missing_folder_not_a_download(hub_cache: Path) -> None:
    with pytest.raises(ConfigError, match=r"model folder models/qwen does not exist.*Hub id such as"):
        resolve_model_dir("./models/qwen")
    with pytest.raises(ConfigError, match="applies only to a Hugging Face Hub id"):
        resolve_model_dir("offline:tiny-idefics3", revision="v1")


def test_hub_id_resolves_to_its_cached_snapshot_at_each_revision(hub_cache: Path) -> None:
    old = add_to_hub_cache(hub_cache, REPO, {"config.json": b'{"v": 1}'}, refs=["v1"])
    new = add_to_hub_cache(hub_cache, REPO, {"config.json": b'{"v": 2}'}, refs=["main"])
    snapshots = hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert resolve_model_dir(REPO) == snapshots / new
    assert resolve_model_dir(REPO, revision=new) == snapshots / new
    assert resolve_model_dir(REPO, revision=old) == snapshots / old
    assert (resolve_model_dir(REPO, revision="v1") / "config.json").read_bytes() == b'{"v": 1}'


def test_offline_without_a_cached_copy_says_how_to_fetch_it(hub_cache: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_model_dir(REPO)
    message = str(caught.value)
    assert f"model {REPO} is not (completely) in the Hugging Face cache {hub_cache}" in message
    assert "offline mode is on" in message and f"`hf download {REPO}`" in message
    assert "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE)" in message and "point `path` at a local" in message

    add_to_hub_cache(hub_cache, REPO, {"config.json": b"{}"}, refs=["main"])  # main is there, v2 is not
    with pytest.raises(ConfigError, match=rf"model {REPO} \(revision v2\) .* `hf download {REPO} --revision v2`"):
        resolve_model_dir(REPO, revision="v2")


def test_downloads_skip_only_formats_pytorch_never_loads() -> None:
    repo_files = [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
        "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "merges.txt", "vocab.json",
        "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
        "onnx/model.onnx", "onnx/model.onnx_data", "model.gguf", "flax_model.msgpack", "tf_model.h5", "rust_model.ot",
    ]  # fmt: skip
    kept = list(filter_repo_objects(repo_files, ignore_patterns=list(IGNORED_FILES)))
    assert kept == repo_files[:14]


def test_revision_must_not_be_empty() -> None:
    assert TransformersModelSpec(path=REPO, revision="v1").revision == "v1"
    with pytest.raises(ValidationError, match="revision"):
        TransformersModelSpec(path=REPO, revision="")


def test_an_unreachable_hub_without_a_cached_copy_says_so(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(ConfigError) as caught:
        resolve_model_dir(REPO, revision="v1")
    message = str(caught.value)
    assert f"model {REPO} (revision v1) is not (completely) in the Hugging Face cache" in message
    assert "the Hub could not be reached" in message and f"`hf download {REPO} --revision v1`" in message
    assert "HF_HUB_OFFLINE" not in message
