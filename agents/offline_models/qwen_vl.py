"""A tiny random Qwen2.5-VL, the paper's model family (transformers only: vLLM's CPU build cannot import Qwen-VL
without torchvision)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from emo_r3.agents.backends.transformers.processors import ImageOnlyQwen2_5_VLProcessor
from emo_r3.agents.offline_models import smollm2

QWEN_VL_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_MIN_PIXELS = 56 * 56
QWEN_VL_MAX_PIXELS = 112 * 112
QWEN_VL_CHAT_TEMPLATE = smollm2.chatml_template("<|vision_start|><|image_pad|><|vision_end|>")


def build_tiny_qwen2_5_vl(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (transformers only: vLLM CPU cannot import Qwen-VL without torchvision)."""
    out_dir = Path(out_dir)
    tokenizer = smollm2.smollm2_gguf_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_VL_SPECIAL_TOKENS)})
    ids = dict(zip(QWEN_VL_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_VL_SPECIAL_TOKENS)), strict=True))
    end = tokenizer.convert_tokens_to_ids(smollm2.END_OF_TURN)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": smollm2.padded_vocab(len(tokenizer)),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": smollm2.SMOLLM2_MAX_POSITIONS,
            "rms_norm_eps": 1e-6,
            # mrope splits head_dim/2 = 32 rotary frequencies over (time, height, width).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [8, 12, 12],
            },
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": end,
            "pad_token_id": end,
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 1,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 128,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = smollm2.greedy_generation_config(tokenizer)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    _declare_processor_class(out_dir, Qwen2_5_VLProcessor.__name__)
    return out_dir


def _declare_processor_class(out_dir: Path, name: str) -> None:
    """Record the stock processor class, not our image-only subclass, so the folder reads like a real one."""
    for path in out_dir.glob("*.json"):
        if path.name == "tokenizer.json":
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "processor_class" in data:
            data["processor_class"] = name
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
