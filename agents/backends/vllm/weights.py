"""Make a running vLLM server serve new full weights, in place: the trainer saves them as a Hugging Face folder, the
server reloads them from there (`/collective_rpc` `reload_weights`) and drops what it computed with the old weights:
its prefix cache and its cache of image-encoder outputs.

Slower than streaming tensors over NCCL, but it works on any machine that can read the folder (one machine, or
shared storage), CPU builds included. The routes exist only with `VLLM_SERVER_DEV_MODE=1`, which also exposes
arbitrary RPC: keep such servers on loopback or a private cluster network.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from emo_r3.agents.backends.vllm.auth import auth_headers
from emo_r3.agents.chat_model import ModelCallError
from emo_r3.agents.model_specs import VLLMModelSpec


class WeightSyncError(RuntimeError):
    """A server did not take new weights; the message says why and what to change."""


def reload_weights(server: VLLMModelSpec, folder: Path) -> None:
    """Serve the weights in `folder` (same parameter names as the served model) from the next request on."""
    try:
        headers = auth_headers(server.api_key_env)
    except ModelCallError as error:
        raise WeightSyncError(str(error)) from error
    body = {"method": "reload_weights", "kwargs": {"weights_path": str(Path(folder).absolute())}}
    with httpx.Client(base_url=server.base_url.rstrip("/"), timeout=server.timeout_s, headers=headers) as client:
        _post(client, server, "/collective_rpc", body)
        # Cached prefixes hold keys and values computed with the old weights; cached image features too (and the
        # reload leaves the encoder cache out of step with the scheduler's record of it: the engine dies at the next
        # image request unless both are reset).
        _post(client, server, "/reset_prefix_cache", None)
        _post(client, server, "/reset_encoder_cache", None)


def _post(client: httpx.Client, server: VLLMModelSpec, path: str, body: dict | None) -> None:
    try:
        response = client.post(path, json=body)
    except httpx.HTTPError as error:
        raise WeightSyncError(
            f"cannot reach the vLLM server at {server.base_url} to reload weights: {error}"
        ) from error
    if response.status_code == 404:
        raise WeightSyncError(
            f"{server.base_url} has no {path}: start vLLM with the environment variable VLLM_SERVER_DEV_MODE=1 to "
            "reload weights in place"
        )
    if response.status_code != 200:
        raise WeightSyncError(f"{server.base_url}{path} refused ({response.status_code}): {response.text[:500]}")
