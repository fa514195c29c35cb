"""Load a local Hugging Face folder (ours or a downloaded checkpoint) for in-process generation.

One entry point decides text-only vs image-text from the config, so callers never branch on the family.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from emo_r3.agents.backends.transformers.batching import Batcher, BatchSettings
from emo_r3.agents.backends.transformers.generation import GeneratedRow, GenerationRequest, generate_rows
from emo_r3.agents.backends.transformers.grouped_attention import use_grouped_sdpa
from emo_r3.agents.backends.transformers.processors import IMAGE_TEXT_MODEL_TYPES, ModelLoadError, load_processor

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass
class LoadedModel:
    """A model ready for `generate`, with what is needed to build its inputs and to know where it stops."""

    model: PreTrainedModel
    processor: ProcessorMixin | None
    tokenizer: PreTrainedTokenizerBase
    supports_images: bool
    eos_token_ids: list[int]
    model_type: str
    # One forward pass at a time per model instance, however many ChatModels (e.g. one per LoRA adapter) share it.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Weights kept in float32 (a model being fully fine-tuned) compute in this dtype: bf16 weights would round
    # most optimizer steps away.
    autocast_dtype: torch.dtype | None = None
    batching: BatchSettings = field(default_factory=BatchSettings)
    # Gathers concurrent calls (from every ChatModel on this model) into batched `generate`s; a copy made with
    # `dataclasses.replace` (another model object) gets a batcher of its own.
    batcher: Batcher[GenerationRequest, GeneratedRow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(functools.partial(generate_rows, self), lambda r: r.batch_key, self.batching)

    def compute(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in: autocast to `autocast_dtype`, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)


def load_hf_model(
    model_dir: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    batching: BatchSettings | None = None,
) -> LoadedModel:
    """Load `model_dir` in eval mode: image-text families with their processor, others as a causal LM."""
    model_dir = Path(model_dir)
    _check_model_folder(model_dir)
    try:
        model_type = AutoConfig.from_pretrained(model_dir, local_files_only=True).model_type
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{model_dir}/config.json cannot be read as a model config: {error}") from error
    if model_type in IMAGE_TEXT_MODEL_TYPES:
        processor = load_processor(model_dir, model_type)
        tokenizer = processor.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    else:
        processor = None
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    model.to(device).eval()
    if model.config._attn_implementation == "sdpa":
        use_grouped_sdpa(model)
    return LoadedModel(
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        supports_images=processor is not None,
        eos_token_ids=eos_token_ids(model.generation_config, tokenizer),
        model_type=model_type,
        batching=batching or BatchSettings(),
    )


def eos_token_ids(generation_config: GenerationConfig | None, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end a turn: generation_config's eos (int or list), else the tokenizer's eos."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    ids = [eos] if isinstance(eos, int) else list(eos)
    return list(dict.fromkeys(int(i) for i in ids))


def _check_model_folder(model_dir: Path) -> None:
    """Fail early, naming the folder and the missing piece, instead of a hub-lookup error from deep inside."""
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist or is not a directory")
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir} is not a model folder: config.json is missing")
    if not any(any(model_dir.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelLoadError(f"{model_dir} has no weights (*.safetensors or *.bin)")
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelLoadError(f"{model_dir} has no tokenizer (tokenizer.json / tokenizer_config.json missing)")
