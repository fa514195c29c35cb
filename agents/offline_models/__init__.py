"""Models built on a machine with no model hub: SmolLM2 from its PyPI GGUF, and tiny vision-language models.

`ensure_model(kind)` builds a kind once into the model cache and returns its folder. The builders live by family
(`smollm2`, `idefics3`, `qwen_vl`, `lora`) and load torch only when a build runs.
"""

from emo_r3.agents.offline_models.cache import MODEL_KINDS, ModelKind, default_model_cache, ensure_model
from emo_r3.agents.offline_models.errors import OfflineModelError

__all__ = ["MODEL_KINDS", "ModelKind", "OfflineModelError", "default_model_cache", "ensure_model"]
