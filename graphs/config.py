"""The graph's configuration: which model serves each role, how each role samples, and the loop bound."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from agents.call_record import Role
from agents.chat_model import SamplingParams
from agents.images import DEFAULT_MAX_PIXELS, MAX_DECODE_PIXELS
from prompts import get_label_set

ROLES: tuple[Role, ...] = ("perceiver", "reasoner", "reflector")
Check = Literal["coherence", "consistency"]

OFFLINE_PREFIX = "offline:"


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field and what to change."""


class TransformersModelSpec(BaseModel):
    """A model run in this process. `path` is a local HF folder, or `offline:<kind>` for a model built locally."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers"] = "transformers"
    path: str = "offline:smollm2-idefics3"
    device: str = Field("auto", description="auto = cuda if available, else cpu; or e.g. cuda:1")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU"
    )


class VLLMModelSpec(BaseModel):
    """A model (or one LoRA adapter of it) served by vLLM's OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["vllm"]
    base_url: str = Field(description="e.g. http://127.0.0.1:8000")
    model: str = Field(description="the server's --served-model-name")
    adapter: str | None = Field(None, description="a LoRA adapter name on that server")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never stored)")
    images: bool = Field(True, description="whether the served model takes images")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)


def read_yaml(path: Path, what: str) -> dict:
    """The mapping in a YAML file (empty file = {}); ConfigError naming `what` and the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def _backend_of(spec: object) -> str:
    # `backend` may be omitted: a model without one runs in-process.
    return spec.get("backend", "transformers") if isinstance(spec, dict) else getattr(spec, "backend", "transformers")


ModelSpec = Annotated[
    Annotated[TransformersModelSpec, Tag("transformers")] | Annotated[VLLMModelSpec, Tag("vllm")],
    Discriminator(_backend_of),
]


def _default_models() -> dict[str, ModelSpec]:
    return {"default": TransformersModelSpec()}


class RoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="a key of `models`")
    sampling: SamplingParams = SamplingParams()


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="larger images are downscaled to this")
    max_decode_pixels: int = Field(MAX_DECODE_PIXELS, gt=0, description="larger images are refused")


def _default_roles() -> dict[Role, RoleConfig]:
    return {
        "perceiver": RoleConfig(sampling=SamplingParams(temperature=0.7, top_p=0.95, max_tokens=160)),
        "reasoner": RoleConfig(sampling=SamplingParams(temperature=0.7, top_p=0.95, max_tokens=256)),
        # EMO-R3 samples its reflection questions at 0.6 / 0.95; answers are one word from a closed set.
        "reflector": RoleConfig(sampling=SamplingParams(temperature=0.6, top_p=0.95, max_tokens=8)),
    }


class GraphConfig(BaseModel):
    """Validated graph configuration (YAML on disk). Every field has a default that runs offline."""

    model_config = ConfigDict(extra="forbid")

    label_set: str | list[str] = "mikels8"
    max_rounds: int = Field(1, ge=0, le=8, description="corrections allowed; 0 = reflection only scores")
    checks: list[Check] = Field(default_factory=lambda: ["coherence", "consistency"])
    timeout_s: float | None = Field(600.0, gt=0, description="per graph run")
    image: ImageConfig = ImageConfig()
    models: dict[str, ModelSpec] = Field(default_factory=_default_models)
    roles: dict[Role, RoleConfig] = Field(default_factory=_default_roles)

    @field_validator("label_set")
    @classmethod
    def _label_set_known(cls, label_set: str | list[str]) -> str | list[str]:
        get_label_set(label_set)  # fail at load time, before any model is loaded
        return label_set

    @model_validator(mode="after")
    def _roles_complete(self) -> GraphConfig:
        missing = [role for role in ROLES if role not in self.roles]
        if missing:
            raise ValueError(f"roles {missing} have no configuration; every role needs an entry under `roles`")
        for role, role_config in self.roles.items():
            if role_config.model not in self.models:
                raise ValueError(
                    f"roles.{role}.model is {role_config.model!r}, which is not defined under `models` "
                    f"(defined: {sorted(self.models)})"
                )
        return self

    @classmethod
    def load(cls, source: str | Path | dict | GraphConfig | None = None) -> GraphConfig:
        """From a YAML file, a dict, an instance, or None (the offline defaults)."""
        if source is None:
            return cls()
        if isinstance(source, GraphConfig):
            return source
        if isinstance(source, str | Path):
            source = read_yaml(Path(source), "config file")
        try:
            return cls.model_validate(source)
        except ValidationError as error:
            raise ConfigError(f"invalid graph config:\n{error}") from error

    def fingerprint(self) -> str:
        """A short hash of the effective config, so traces can tell runs of different configs apart."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
