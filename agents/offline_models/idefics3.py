"""Idefics3 (the SmolVLM family): a tiny random one for fast tests, and one whose language model is SmolLM2.

Both have a random 64-px vision tower (4 tokens per image) and can be served by the CPU build of vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from emo_r3.agents.offline_models import smollm2
from emo_r3.agents.offline_models.errors import OfflineModelError

IDEFICS3_SPECIAL_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")
IDEFICS3_LAYOUT_TOKENS = ("<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
IDEFICS3_IMAGE_SIZE = 64
IDEFICS3_PATCH_SIZE = 16
IDEFICS3_SCALE_FACTOR = 2
IDEFICS3_IMAGE_SEQ_LEN = (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH_SIZE) ** 2 // IDEFICS3_SCALE_FACTOR**2
IDEFICS3_CHAT_TEMPLATE = smollm2.chatml_template("<image>")


def build_idefics3(out_dir: Path, *, text_model: Literal["tiny"] | Path = "tiny", seed: int = 0) -> Path:
    """An Idefics3 VLM with a random 64-px vision tower (4 tokens per image) that vLLM CPU can serve.

    `text_model="tiny"` gives a random 2-layer Llama (fast tests); a SmolLM2 folder (from
    `import_smollm2_text`) makes the pretrained SmolLM2 the language model, so the text is fluent and only
    the "eye" is random.
    """
    out_dir = Path(out_dir)
    tokenizer = _load_base_tokenizer(text_model)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IDEFICS3_SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(IDEFICS3_LAYOUT_TOKENS), special_tokens=True)
    vocab_size = smollm2.padded_vocab(len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    end = tokenizer.convert_tokens_to_ids(smollm2.END_OF_TURN)

    torch.manual_seed(seed)
    pretrained = None
    if text_model == "tiny":
        text_config = _tiny_llama_config(vocab_size, tokenizer)
    else:
        pretrained = AutoModelForCausalLM.from_pretrained(text_model, dtype=torch.float32)
        pretrained.resize_token_embeddings(vocab_size)
        text_config = pretrained.config
    config = Idefics3Config(
        text_config=text_config.to_dict(),
        vision_config={
            "hidden_size": 64,
            "num_attention_heads": 1,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "image_size": IDEFICS3_IMAGE_SIZE,
            "patch_size": IDEFICS3_PATCH_SIZE,
        },
        scale_factor=IDEFICS3_SCALE_FACTOR,
        image_token_id=image_token_id,
        pad_token_id=end,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = Idefics3ForConditionalGeneration(config)
    if pretrained is not None:
        _copy_text_weights(pretrained, model)
    model.generation_config = smollm2.greedy_generation_config(tokenizer)

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IDEFICS3_IMAGE_SIZE},
        max_image_size={"longest_edge": IDEFICS3_IMAGE_SIZE},
    )
    tokenizer.chat_template = IDEFICS3_CHAT_TEMPLATE
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _load_base_tokenizer(text_model: Literal["tiny"] | Path) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer: from a SmolLM2 folder when given one (fast), else straight from the GGUF."""
    if text_model == "tiny":
        return smollm2.smollm2_gguf_tokenizer()
    text_dir = Path(text_model)
    if not (text_dir / "config.json").is_file():
        raise OfflineModelError(f"{text_dir} is not a SmolLM2 folder (no config.json); build it with ensure_model.")
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.model_max_length = smollm2.SMOLLM2_MAX_POSITIONS
    return tokenizer


def _tiny_llama_config(vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """SmolLM2-shaped but tiny; head_dim 64 as vLLM's CPU attention takes only {32, 64, 80, ...}."""
    end = tokenizer.convert_tokens_to_ids(smollm2.END_OF_TURN)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=smollm2.SMOLLM2_MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end,
        pad_token_id=end,
        tie_word_embeddings=False,
    )


def _copy_text_weights(source: torch.nn.Module, target: Idefics3ForConditionalGeneration) -> None:
    """Make the Idefics3 language model the pretrained LM: decoder weights, embeddings and head."""
    target.model.text_model.load_state_dict(source.model.state_dict(), strict=True)
    with torch.no_grad():
        target.lm_head.weight.copy_(source.lm_head.weight)
    if target.config.tie_word_embeddings:
        target.tie_weights()
