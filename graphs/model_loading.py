"""Turn the config's model specs into ChatModel instances, one per distinct model (roles share instances)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agents.chat_model import ChatModel
from agents.vllm_backend import VLLMChatModel
from graphs.config import OFFLINE_PREFIX, ConfigError, GraphConfig, ModelSpec, TransformersModelSpec, VLLMModelSpec

if TYPE_CHECKING:  # torch loads only when a model does, so scripted/HTTP-only graphs start fast
    import torch


def resolve_model_dir(path: str, cache_dir: Path | None = None) -> Path:
    """A local folder as given, or an offline model built into the cache on first use."""
    # torch and transformers load only when a model does, so scripted/HTTP-only graphs start fast.
    from agents.offline_models import MODEL_KINDS, ensure_model

    offline = [OFFLINE_PREFIX + kind for kind in MODEL_KINDS]
    if path.startswith(OFFLINE_PREFIX):
        kind = path.removeprefix(OFFLINE_PREFIX)
        if kind not in MODEL_KINDS:
            raise ConfigError(f"unknown offline model {path!r}; available: {offline}")
        return ensure_model(kind, cache_dir)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"model folder {folder} does not exist; point `models.<name>.path` at a local HF checkpoint "
            f"or use one of {offline}"
        )
    return folder


def load_chat_model(spec: ModelSpec, *, cache_dir: Path | None = None) -> ChatModel:
    if isinstance(spec, VLLMModelSpec):
        return VLLMChatModel(
            spec.base_url, spec.model, adapter=spec.adapter, api_key_env=spec.api_key_env,
            supports_images=spec.images, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
        )  # fmt: skip
    from agents.transformers_backend import TransformersChatModel

    device, dtype = device_and_dtype(spec)
    folder = resolve_model_dir(spec.path, cache_dir)
    return TransformersChatModel.from_dir(folder, model_id=spec.path, device=device, dtype=dtype)


def device_and_dtype(spec: TransformersModelSpec) -> tuple[str, torch.dtype]:
    """`auto` resolved: cuda + bfloat16 when a GPU is there, else cpu + float32."""
    import torch

    device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = spec.dtype if spec.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, dtype)


def load_role_models(config: GraphConfig, *, cache_dir: Path | None = None) -> dict[str, ChatModel]:
    """Role name -> ChatModel; roles naming the same `models` entry get the same instance."""
    by_name: dict[str, ChatModel] = {}
    for role_config in config.roles.values():
        if role_config.model not in by_name:
            by_name[role_config.model] = load_chat_model(config.models[role_config.model], cache_dir=cache_dir)
    return {role: by_name[role_config.model] for role, role_config in config.roles.items()}
