"""`emo-r3 export` on real tiny training runs: a lora run's PEFT folders hold exactly the trained adapters, merged
folders answer like base + adapter, and a shared run exported by the CLI loads with `from_pretrained` holding exactly
the checkpoint's weights. (Serving an export with vLLM: tests/servers/test_export_vllm.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from train_configs import tiny_train_config
from transformers import AutoModelForImageTextToText

from emo_r3.agents.call_record import ROLES
from emo_r3.agents.offline_models import ensure_model
from emo_r3.training.checkpoint import latest_checkpoint, load_policies
from emo_r3.training.config import TrainConfig
from emo_r3.training.export import ExportManifest, export_run
from emo_r3.training.local_trainer import LocalTrainer

LOGITS_ATOL = 1e-4  # merged weights W + BA·s against the unmerged sum, float32


@pytest.fixture(scope="module")
def lora_trainer(tmp_path_factory: pytest.TempPathFactory, one_image_dataset: Path, model_cache: Path) -> LocalTrainer:
    """One lora step, at a learning rate that moves every adapter's B away from its initial zeros."""
    run_dir = tmp_path_factory.mktemp("export") / "lora-run"
    config = tiny_train_config(run_dir, one_image_dataset, mode="lora", steps=1, optim={"lr": 1e-2})
    trainer = LocalTrainer(TrainConfig.load(config), cache_dir=model_cache)
    trainer.train()
    return trainer


def _base_model(model_cache: Path) -> torch.nn.Module:
    return AutoModelForImageTextToText.from_pretrained(ensure_model("tiny-idefics3", model_cache)).eval()


def _input_ids(trainer: LocalTrainer) -> torch.Tensor:
    tokenizer = trainer.policies.policies["reasoner"].loaded.tokenizer
    return tokenizer("How does this picture make you feel? I feel", return_tensors="pt").input_ids


def test_lora_export_writes_peft_folders_holding_the_trained_adapters(
    lora_trainer: LocalTrainer, tmp_path: Path, model_cache: Path
) -> None:
    manifest = export_run(lora_trainer.run_dir, tmp_path / "out", cache_dir=model_cache)

    assert manifest.roles == {role: role for role in ROLES} and manifest.step == 1
    assert {name: policy.format for name, policy in manifest.policies.items()} == dict.fromkeys(ROLES, "peft")
    assert ExportManifest.model_validate_json((tmp_path / "out" / "export.json").read_text()) == manifest
    for role in ROLES:
        folder = tmp_path / "out" / role
        assert sorted(p.name for p in folder.iterdir() if p.suffix != ".md") == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        loaded = PeftModel.from_pretrained(_base_model(model_cache), folder)
        exported = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
        trained = lora_trainer.policies.policies[role].state_dict()
        assert len(exported) == len(trained) > 0
        for name, tensor in trained.items():
            torch.testing.assert_close(exported[name.replace(f".{role}.", ".default.")], tensor, atol=0, rtol=0)
        assert any(t.abs().max() > 1e-4 for n, t in trained.items() if ".lora_B." in n), f"{role} did not train"


def test_merged_lora_export_answers_like_base_plus_adapter(
    lora_trainer: LocalTrainer, tmp_path: Path, model_cache: Path
) -> None:
    manifest = export_run(lora_trainer.run_dir, tmp_path / "out", merge_lora=True, cache_dir=model_cache)

    assert {name: policy.format for name, policy in manifest.policies.items()} == dict.fromkeys(ROLES, "hf")
    ids = _input_ids(lora_trainer)
    model = lora_trainer.policies.policies["reasoner"].loaded.model
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        for role in ROLES:
            model.set_adapter(role)
            adapted = model(input_ids=ids).logits
            merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "out" / role).eval()
            torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=LOGITS_ATOL, rtol=0)
            assert (adapted - base).abs().max() > 100 * LOGITS_ATOL, f"{role}: the adapter changes nothing"


def _export_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "emo_r3.graphs.cli", "export", *map(str, args)]


@pytest.fixture(scope="module")
def separate_run(tmp_path_factory: pytest.TempPathFactory, one_image_dataset: Path, model_cache: Path) -> Path:
    """One step of separate mode training only the reflector: one full-weight policy, two roles left untrained."""
    run_dir = tmp_path_factory.mktemp("export") / "separate-run"
    policy = {"mode": "separate", "train_roles": ["reflector"]}
    config = tiny_train_config(run_dir, one_image_dataset, mode="separate", steps=1, policy=policy)
    LocalTrainer(TrainConfig.load(config), cache_dir=model_cache).train()
    return run_dir


def test_the_cli_exports_a_full_weight_run_as_a_hugging_face_folder(separate_run: Path, tmp_path: Path) -> None:
    result = subprocess.run(_export_command(separate_run, "--out", tmp_path / "out"), capture_output=True, text=True)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hugging Face model of 'reflector', roles reflector" in result.stderr
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["roles"] == {"perceiver": None, "reasoner": None, "reflector": "reflector"}
    assert manifest["checkpoint"] == "step-00000001" and manifest["mode"] == "separate"
    assert "| reflector | `reflector/` | Hugging Face model |" in (tmp_path / "out" / "README.md").read_text()
    folder = tmp_path / "out" / "reflector"
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    model = AutoModelForImageTextToText.from_pretrained(folder)
    _, trained = load_policies(latest_checkpoint(separate_run / "checkpoints"))
    weights = dict(model.named_parameters())
    assert len(weights) == len(trained["reflector"])
    for name, tensor in trained["reflector"].items():
        torch.testing.assert_close(weights[name], tensor, atol=0, rtol=0, msg=name)


def test_the_cli_says_what_is_wrong_without_a_traceback(separate_run: Path, tmp_path: Path) -> None:
    """--merge-lora on a full-weight run: exit 2 (usage) and a message saying what to do, nothing written. (The other
    refusals, checked before any model loads: tests/unit/test_export_checks.py.)"""
    result = subprocess.run(
        _export_command(separate_run, "--out", tmp_path / "out", "--merge-lora"), capture_output=True, text=True
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trained full weights (policy.mode 'separate')" in result.stderr and "without --merge-lora" in result.stderr
    assert not (tmp_path / "out").exists()
