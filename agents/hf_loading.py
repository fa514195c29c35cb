"""Load a local Hugging Face folder (ours or a downloaded checkpoint) for in-process generation.

One entry point decides text-only vs image-text from the config, so callers never branch on the family.
Image-text processors are rebuilt with the PIL image processor and, for Qwen2-VL/Qwen2.5-VL/SmolVLM,
without their video processor: the torchvision backends cannot be installed next to the CPU torch on these
machines, and using PIL everywhere gives the same pixel values (hence token ids) on every machine.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    SmolVLMProcessor,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.idefics3.processing_idefics3 import Idefics3Processor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class ModelLoadError(ValueError):
    """A folder that is not a loadable model; the message names the folder and what is missing."""


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (whose only implementation needs torchvision).

    ProcessorMixin derives its sub-processors from the __init__ signature, so leaving `video_processor` out
    of it is what stops both the constructor and `from_pretrained` from asking for one.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor; see ImageOnlyQwen2VLProcessor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
    """SmolVLM processor without the video processor; see ImageOnlyQwen2VLProcessor."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_len: int = 169,
        chat_template=None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image_processor,
            tokenizer,
            None,
            image_seq_len=image_seq_len,
            chat_template=chat_template,
            **kwargs,
        )

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        """Skip SmolVLM's override: it only adds video defaults, read from the absent video processor."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


# model_type -> (processor class, image processor class); sub-processors are passed in this order.
IMAGE_TEXT_PROCESSORS: dict[str, tuple[type[ProcessorMixin], type[BaseImageProcessor]]] = {
    "idefics3": (Idefics3Processor, Idefics3ImageProcessorPil),
    "smolvlm": (ImageOnlySmolVLMProcessor, SmolVLMImageProcessorPil),
    "qwen2_vl": (ImageOnlyQwen2VLProcessor, Qwen2VLImageProcessorPil),
    "qwen2_5_vl": (ImageOnlyQwen2_5_VLProcessor, Qwen2VLImageProcessorPil),
}
IMAGE_TEXT_MODEL_TYPES = frozenset(IMAGE_TEXT_PROCESSORS)


@dataclass
class LoadedModel:
    """A model ready for `generate`, with what is needed to build its inputs and to know where it stops."""

    model: PreTrainedModel
    processor: ProcessorMixin | None
    tokenizer: PreTrainedTokenizerBase
    supports_images: bool
    eos_token_ids: list[int]
    model_type: str
    # One generation at a time per model instance, however many ChatModels (e.g. one per LoRA adapter) share it.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Weights kept in float32 (a model being fully fine-tuned) compute in this dtype: bf16 weights would round
    # most optimizer steps away.
    autocast_dtype: torch.dtype | None = None

    def compute(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in: autocast to `autocast_dtype`, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)


def load_hf_model(
    model_dir: Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
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
    return LoadedModel(
        model=model,
        processor=processor,
        tokenizer=tokenizer,
        supports_images=processor is not None,
        eos_token_ids=eos_token_ids(model.generation_config, tokenizer),
        model_type=model_type,
    )


def load_processor(model_dir: Path, model_type: str) -> ProcessorMixin:
    """The image-text processor for `model_type`, with the PIL image processor and no video processor.

    The processor config and chat template are read the way transformers reads them, so real checkpoints
    (chat_template.json or .jinja, preprocessor_config.json with min/max_pixels) behave as with their
    stock processor.
    """
    if not any((model_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise ModelLoadError(
            f"{model_dir} is a {model_type} model without an image processor "
            "(processor_config.json / preprocessor_config.json missing)"
        )
    processor_class, image_processor_class = IMAGE_TEXT_PROCESSORS[model_type]
    processor_dict, init_kwargs = processor_class.get_processor_dict(model_dir, local_files_only=True)
    image_processor = image_processor_class.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    try:
        return processor_class.from_args_and_dict([image_processor, tokenizer], processor_dict, **init_kwargs)
    except ImportError as error:  # e.g. SmolVLM's processor needs `num2words`
        raise ModelLoadError(f"cannot build the {model_type} processor for {model_dir}: {error}") from error


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
