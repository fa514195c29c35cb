"""Push updated LoRA adapters to a running vLLM server over its HTTP API (`/v1/load_lora_adapter`, in place)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import httpx

from emo_r3.agents.backends.vllm.auth import auth_headers
from emo_r3.agents.chat_model import ModelCallError
from emo_r3.agents.model_specs import VLLMModelSpec


class AdapterSyncError(RuntimeError):
    """The server did not take an adapter; the message says why and what to change."""


def load_adapters(server: VLLMModelSpec, adapters: Mapping[str, Path]) -> None:
    """(Re)load each adapter under its name on `server` (its URL, API key and timeout); requests that follow use the
    new weights.

    Needs a server started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`; the adapter folders must
    be readable by the server process (same machine or shared storage), and must stay in place until the next load:
    vLLM (0.32, issue #33791) keeps `load_inplace` on the stored request and re-reads the adapter from its folder at
    every engine step, so a request after the folder is gone kills the engine.

    Why not unload + load (no `load_inplace`), which avoids those re-reads: the unloaded adapter stays in the engine
    under its old id and keeps a LoRA slot, so the slots fill up, and the CPU build then gives base-model requests
    (frozen roles) the adapter in the last slot (slot index -1).
    """
    base_url, api_key_env = server.base_url, server.api_key_env
    try:
        headers = auth_headers(api_key_env)
    except ModelCallError as error:
        raise AdapterSyncError(str(error)) from error
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=server.timeout_s, headers=headers) as client:
        for name, folder in adapters.items():
            body = {"lora_name": name, "lora_path": str(Path(folder).absolute()), "load_inplace": True}
            try:
                response = client.post("/v1/load_lora_adapter", json=body)
            except httpx.HTTPError as error:
                problem = f"cannot reach the vLLM server at {base_url} to load adapter {name!r}: {error}"
                raise AdapterSyncError(problem) from error
            if response.status_code == 404:
                raise AdapterSyncError(
                    f"{base_url} has no /v1/load_lora_adapter: start vLLM with --enable-lora and the environment "
                    "variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"
                )
            if response.status_code in (401, 403):
                raise AdapterSyncError(
                    f"{base_url} refused the API key while loading adapter {name!r} (HTTP {response.status_code}); "
                    + (f"check the environment variable {api_key_env}" if api_key_env else "set `api_key_env`")
                )
            if response.status_code != 200:
                raise AdapterSyncError(
                    f"{base_url} refused adapter {name!r} from {folder} ({response.status_code}): {response.text[:500]}"
                )
