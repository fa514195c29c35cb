"""Random PEFT LoRA adapters on an offline Idefics3, one per role: what the vLLM LoRA tests serve."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Idefics3ForConditionalGeneration

from emo_r3.agents.offline_models.errors import OfflineModelError

# The text model's attention projections only: vLLM serves LoRA on the language model of an Idefics3.
LORA_TARGET_MODULES = r".*text_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"


def build_lora_adapter(base_dir: Path, out_dir: Path, *, seed: int, b_scale: float = 50.0, rank: int = 8) -> Path:
    """A random PEFT LoRA adapter on the text model of the Idefics3 in `base_dir`, deterministic by `seed`.

    Saved from `Idefics3ForConditionalGeneration`, so the keys are `base_model.model.model.text_model.layers.*`
    as vLLM expects (an adapter made on a bare Llama loads there but changes nothing). Both A and B are random
    (`init_lora_weights=False`) and B is scaled by `b_scale`, so greedy output visibly differs from the base.
    """
    from peft import LoraConfig, get_peft_model  # the `local` extra; only adapter builds need it

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    config = json.loads((base_dir / "config.json").read_text())
    if config.get("model_type") != "idefics3":
        raise OfflineModelError(f"{base_dir} is a {config.get('model_type')!r} model; LoRA builds need an Idefics3")
    model = Idefics3ForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGET_MODULES, init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if ".lora_B." in name:
                parameter.mul_(b_scale)
    peft_model.save_pretrained(out_dir)
    return out_dir
