"""The graph's configuration: which model serves each role, how each role samples, and the loop bound."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emo_r3.agents.call_record import ROLES, Role
from emo_r3.agents.chat_model import SamplingParams
from emo_r3.agents.images import DEFAULT_MAX_PIXELS, MAX_DECODE_PIXELS
from emo_r3.agents.model_specs import ConfigError, ModelSpec, TransformersModelSpec
from emo_r3.prompts import get_label_set

Check = Literal["coherence", "consistency"]


def read_yaml(path: Path, what: str) -> dict:
    """The mapping in a YAML file (empty file = {}); ConfigError naming `what` and the file otherwise.

    UTF-8, or UTF-16/UTF-8 with a byte-order mark (what Windows editors save), as YAML itself allows.
    """
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes()) or {}
    except yaml.reader.ReaderError as error:
        raise ConfigError(f"{path} is not UTF-8 (or UTF-16) text: {error.reason}; save it as UTF-8") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    except RecursionError as error:
        raise ConfigError(f"{path} nests mappings or lists too deeply to be a configuration") from error
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read ({error.strerror or error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


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
