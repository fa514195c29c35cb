"""The config's roles → ChatModel instances: one per distinct `models` entry, shared by the roles that name it."""

from __future__ import annotations

from pathlib import Path

from emo_r3.agents.call_record import Role
from emo_r3.agents.chat_model import ChatModel
from emo_r3.agents.model_specs import load_chat_model
from emo_r3.graphs.config import GraphConfig


def load_role_models(config: GraphConfig, *, cache_dir: Path | None = None) -> dict[Role, ChatModel]:
    """Role name -> ChatModel; roles naming the same `models` entry get the same instance."""
    by_name: dict[str, ChatModel] = {}
    for role_config in config.roles.values():
        if role_config.model not in by_name:
            by_name[role_config.model] = load_chat_model(config.models[role_config.model], cache_dir=cache_dir)
    return {role: by_name[role_config.model] for role, role_config in config.roles.items()}
