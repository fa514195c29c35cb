"""Image-text processors built from a model folder with the PIL image processor and no video processor.

The torchvision backends of the image and video processors cannot be installed next to the CPU torch on these
machines, and using PIL everywhere gives the same pixel values (hence token ids) on every machine. Qwen2-VL,
Qwen2.5-VL and SmolVLM processors are rebuilt without their video processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    AutoTokenizer,
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
