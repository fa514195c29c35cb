"""The API key a vLLM server expects, read from an environment variable at call time and never stored."""

from __future__ import annotations

import os

from emo_r3.agents.chat_model import ModelCallError


def auth_headers(api_key_env: str | None) -> dict[str, str]:
    """`Authorization: Bearer <key>` from the variable `api_key_env` names; no header when no variable is named."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:  # sending no key would only come back as a puzzling 401
        raise ModelCallError(f"api_key_env is {api_key_env}, but that environment variable is not set")
    return {"Authorization": f"Bearer {key}"}
