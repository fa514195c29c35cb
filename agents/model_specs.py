"""Where a model comes from (a config entry) and the ChatModel that serves it: in-process or on a vLLM server.

The graph config names models with these specs, and training reaches its vLLM server through the same
`VLLMModelSpec`, so an API key, a timeout or a retry setting means the same thing everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from emo_r3.agents.backends.transformers.batching import BatchSettings
from emo_r3.agents.backends.vllm.chat import VLLMChatModel
from emo_r3.agents.backends.vllm.retry_policy import RetryPolicy
from emo_r3.agents.chat_model import ChatModel

if TYPE_CHECKING:  # torch loads only when a model does, so scripted/HTTP-only graphs start fast
    import torch

OFFLINE_PREFIX = "offline:"


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field and what to change."""


class TransformersModelSpec(BaseModel):
    """A model run in this process. `path` is a local HF folder, a Hugging Face Hub id (`org/name`, from the HF
    cache or downloaded into it), or `offline:<kind>` for a model built locally."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers"] = "transformers"
    path: str = Field(
        "offline:smollm2-idefics3",
        description="a local HF folder, a Hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or offline:<kind>",
    )
    revision: str | None = Field(
        None, min_length=1, description="for a Hub id: the branch, tag or commit to load (default: its main branch)"
    )
    device: str = Field("auto", description="auto = cuda if available, else cpu; or e.g. cuda:1")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU"
    )
    batching: BatchSettings = Field(
        default_factory=BatchSettings, description="concurrent calls share forward passes; max_size 1 turns it off"
    )


class VLLMModelSpec(RetryPolicy):
    """A model (or one LoRA adapter of it) served by vLLM's OpenAI-compatible server.

    The retry settings (`max_retries`, `backoff_s`, `backoff_cap_s`, `retry_budget_s`) are RetryPolicy's fields,
    written flat in the spec like the others.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm"]
    base_url: str = Field(description="e.g. http://127.0.0.1:8000")
    model: str = Field(description="the server's --served-model-name")
    adapter: str | None = Field(None, description="a LoRA adapter name on that server")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never stored)")
    images: bool = Field(True, description="whether the served model takes images")
    timeout_s: float = Field(120.0, gt=0)


def _backend_of(spec: object) -> str:
    # `backend` may be omitted: a model without one runs in-process.
    return spec.get("backend", "transformers") if isinstance(spec, dict) else getattr(spec, "backend", "transformers")


ModelSpec = Annotated[
    Annotated[TransformersModelSpec, Tag("transformers")] | Annotated[VLLMModelSpec, Tag("vllm")],
    Discriminator(_backend_of),
]


def resolve_model_dir(path: str, cache_dir: Path | None = None, *, revision: str | None = None) -> Path:
    """The model folder `path` names: `offline:<kind>` built into the cache on first use, a local folder as given,
    or a Hub id's snapshot in the Hugging Face cache (fetched unless offline) at `revision`."""
    from emo_r3.agents.hub_models import hub_snapshot, is_hub_id
    from emo_r3.agents.offline_models import MODEL_KINDS, ensure_model

    offline = [OFFLINE_PREFIX + kind for kind in MODEL_KINDS]
    if is_hub_id(path):
        return hub_snapshot(path, revision)
    if revision is not None:
        raise ConfigError(
            f"`revision: {revision}` applies only to a Hugging Face Hub id (org/name), but path {path!r} is "
            "not one (an existing local folder, a path or an offline kind): remove `revision`"
        )
    if path.startswith(OFFLINE_PREFIX):
        kind = path.removeprefix(OFFLINE_PREFIX)
        if kind not in MODEL_KINDS:
            raise ConfigError(f"unknown offline model {path!r}; available: {offline}")
        return ensure_model(kind, cache_dir)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"model folder {folder} does not exist; point `models.<name>.path` at a local HF checkpoint, "
            f"a Hugging Face Hub id such as Qwen/Qwen2.5-VL-3B-Instruct, or one of {offline}"
        )
    return folder


def load_chat_model(spec: TransformersModelSpec | VLLMModelSpec, *, cache_dir: Path | None = None) -> ChatModel:
    """The ChatModel a spec describes; an in-process model is loaded (and an offline one built) now."""
    if isinstance(spec, VLLMModelSpec):
        return VLLMChatModel(
            spec.base_url,
            spec.model,
            adapter=spec.adapter,
            api_key_env=spec.api_key_env,
            supports_images=spec.images,
            timeout_s=spec.timeout_s,
            **spec.model_dump(include=set(RetryPolicy.model_fields)),
        )
    from emo_r3.agents.backends.transformers.chat import TransformersChatModel

    device, dtype = device_and_dtype(spec)
    folder = resolve_model_dir(spec.path, cache_dir, revision=spec.revision)
    return TransformersChatModel.from_dir(
        folder, model_id=spec.path, device=device, dtype=dtype, batching=spec.batching
    )


def device_and_dtype(spec: TransformersModelSpec) -> tuple[str, torch.dtype]:
    """`auto` resolved: cuda + bfloat16 when a GPU is there, else cpu + float32."""
    import torch

    device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = spec.dtype if spec.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, dtype)
