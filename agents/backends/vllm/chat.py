"""ChatModel over vLLM's OpenAI-compatible HTTP API (httpx): exact token ids, logprobs, closed sets, retries.

Every sampling parameter is sent explicitly (vLLM fills omitted ones from the model's generation_config, not
from OpenAI's defaults), token ids are requested with `return_token_ids` and the call fails loudly when a
server does not return them, and closed-set answers use `structured_outputs` (the old `guided_*` fields are
silently ignored by current vLLM).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple, Unpack

import httpx

from emo_r3.agents.backends.vllm.auth import auth_headers
from emo_r3.agents.backends.vllm.retry_policy import RetryPolicy, RetrySettings, next_wait, retry_after_s
from emo_r3.agents.chat_model import ChatMessage, Completion, ImagePart, ModelCallError, SamplingParams, Usage

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUS = frozenset({429, 503})  # the answers whose Retry-After says when to come back


class ServerNotReadyError(ModelCallError):
    """No usable vLLM server at the configured address; the message says how to start one."""


class _Failure(NamedTuple):
    """An attempt that may succeed if tried again: what went wrong, and the wait the server asked for (if any)."""

    problem: str
    retry_after: float | None = None


class VLLMChatModel:
    """One served model (or LoRA adapter of it) on a vLLM server.

    `model` is the server's `--served-model-name`; `adapter`, when set, is a LoRA adapter name on that server
    (`--lora-modules NAME=DIR` or `/v1/load_lora_adapter`), which requests then address instead.
    The API key is read from the environment variable `api_key_env` at call time and never stored in records.
    `retry` takes RetryPolicy's fields (max_retries, backoff_s, backoff_cap_s, retry_budget_s).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        adapter: str | None = None,
        api_key_env: str | None = None,
        supports_images: bool = True,
        timeout_s: float = 120.0,
        max_connections: int = 64,
        **retry: Unpack[RetrySettings],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._adapter = adapter
        self._api_key_env = api_key_env
        self._supports_images = supports_images
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._retry = RetryPolicy(**retry)
        # os.urandom per draw: no state that a seeded global `random`, a fork or a pickled copy could share, which
        # would send the workers' "random" retries back at the same instants.
        self._rng = random.SystemRandom()
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    @property
    def model_id(self) -> str:
        return f"vllm:{self.model}"

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def supports_images(self) -> bool:
        return self._supports_images

    async def chat(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, choices: list[str] | None = None
    ) -> Completion:
        return (await self.sample(messages, sampling, n=1, choices=choices))[0]

    async def sample(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, n: int, choices: list[str] | None = None
    ) -> list[Completion]:
        """`n` completions of one prompt in one request (group sampling; child i uses seed + i)."""
        start = time.perf_counter()
        body = self.request_body(messages, sampling, n=n, choices=choices)
        payload = await self._post("/v1/chat/completions", body)
        latency = time.perf_counter() - start
        try:
            return [self._completion(payload, choice, latency) for choice in _choices(payload, n, self.base_url)]
        except (KeyError, TypeError, AttributeError, ValueError) as error:  # ValueError: pydantic's, on bad values
            raise ModelCallError(
                f"{self.base_url}: unexpected response shape ({type(error).__name__}: {error})"
            ) from error

    def request_body(
        self, messages: list[ChatMessage], sampling: SamplingParams, *, n: int = 1, choices: list[str] | None = None
    ) -> dict[str, Any]:
        max_tokens = sampling.max_tokens
        if choices:  # the options bound the answer; let the longest one (plus EOS) finish
            max_tokens = max(max_tokens, max(len(c.encode()) for c in choices) + 1)
        body: dict[str, Any] = {
            "model": self._adapter or self.model,
            "messages": [_openai_message(m) for m in messages],
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "max_completion_tokens": max_tokens,
            "logprobs": True,
            "return_token_ids": True,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if choices:
            body["structured_outputs"] = {"choice": list(choices)}
        return body

    def _completion(self, payload: dict[str, Any], choice: dict[str, Any], latency: float) -> Completion:
        prompt_ids, ids = payload["prompt_token_ids"], choice["token_ids"]
        logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
        if len(logprobs) != len(ids):
            raise ModelCallError(f"{self.base_url}: {len(ids)} token ids but {len(logprobs)} logprobs in one choice")
        finish = choice.get("finish_reason")
        if finish not in ("stop", "length"):  # "abort"/"error": the server gave up; not an answer to record
            raise ModelCallError(f"{self.base_url}: the generation ended with finish_reason={finish!r}, not an answer")
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_token_ids=prompt_ids,
            completion_token_ids=ids,
            logprobs=logprobs,
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(ids)),
            latency_s=latency,
            model_id=self.model_id,
            adapter=self._adapter,
        )

    async def check_ready(self) -> None:
        """Raise ServerNotReadyError unless the server answers /health and serves this model (or adapter)."""
        wanted = self._adapter or self.model
        headers = auth_headers(self._api_key_env)
        try:  # a client of its own: callers often check in one event loop and run in another
            async with httpx.AsyncClient(timeout=5.0) as client:
                health = await client.get(f"{self.base_url}/health")
                models = await client.get(f"{self.base_url}/v1/models", headers=headers)
        except httpx.HTTPError as error:
            raise ServerNotReadyError(self._not_ready(f"cannot connect ({type(error).__name__})")) from error
        if health.status_code != 200:
            raise ServerNotReadyError(self._not_ready(f"/health answered {health.status_code}"))
        if models.status_code in (401, 403):
            raise ServerNotReadyError(
                f"the vLLM server at {self.base_url} refused the API key (HTTP {models.status_code}); "
                + (f"check the environment variable {self._api_key_env}" if self._api_key_env
                   else "name the variable holding its key in the model's `api_key_env`")
            )  # fmt: skip
        if models.status_code != 200:
            raise ServerNotReadyError(self._not_ready(f"/v1/models answered {models.status_code}"))
        data = _json(models, self.base_url).get("data")
        served = [entry.get("id") for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []
        if wanted not in served:
            raise ServerNotReadyError(
                f"the vLLM server at {self.base_url} does not serve {wanted!r} (it serves {served}); "
                + (f"load the adapter with `--lora-modules {wanted}=DIR` or POST /v1/load_lora_adapter"
                   if self._adapter else f"start it with `--served-model-name {wanted}`")
            )  # fmt: skip

    def _not_ready(self, problem: str) -> str:
        return (
            f"no vLLM server ready at {self.base_url} ({problem}). Start one, e.g.\n"
            f"  python -m vllm.entrypoints.openai.api_server --model MODEL_DIR --served-model-name {self.model} "
            f"--host 127.0.0.1 --port {httpx.URL(self.base_url).port or 8000}\n"
            "or `docker compose up vllm` (see compose.yaml), then wait for /health to answer 200"
        )

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        headers = auth_headers(self._api_key_env)
        policy, waited = self._retry, 0.0
        for retry in range(policy.max_retries + 1):
            outcome = await self._attempt(url, body, headers)
            if not isinstance(outcome, _Failure):
                return outcome
            if retry < policy.max_retries:
                wait = next_wait(policy, retry, waited_s=waited, retry_after=outcome.retry_after, rng=self._rng)
                if wait is None:
                    raise ModelCallError(self._over_budget(url, outcome, retry + 1, waited))
                await asyncio.sleep(wait)
                waited += wait
        raise ModelCallError(
            f"{url}: {outcome.problem} (gave up after {policy.max_retries + 1} attempts; the model spec's "
            "`max_retries` sets how many)"
        )

    def _over_budget(self, url: str, failure: _Failure, attempts: int, waited: float) -> str:
        asked = "the next backoff"
        if failure.retry_after is not None:
            asked = f"the server's Retry-After of {failure.retry_after:g} s"
        return (
            f"{url}: {failure.problem} (gave up after {attempts} attempt(s): waiting {asked} would pass the call's "
            f"retry budget of {self._retry.retry_budget_s:g} s, {waited:.1f} s of it spent; raise the model spec's "
            "`retry_budget_s` to let calls wait longer for a busy server)"
        )

    async def _attempt(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | _Failure:
        """One request: the answer, a _Failure worth retrying, or a ModelCallError for faults a retry cannot fix."""
        try:
            # The deadline covers the whole answer: httpx's read timeout is per read, so a server that
            # trickles bytes would never time out.
            async with asyncio.timeout(self._timeout_s):
                response = await self._client().post(url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            return _Failure(f"vLLM server unreachable ({type(error).__name__}: {error})")
        except (httpx.TimeoutException, TimeoutError) as error:
            # Not a passing fault: a generation that ran past the deadline would run past it again, and
            # retrying would multiply the wait (4 tries x 120 s) before the user hears anything.
            raise ModelCallError(
                f"{url}: no answer within {self._timeout_s} s ({type(error).__name__}); not retried, since a "
                "request that timed out would most likely time out again: check the server, or raise the model "
                "spec's `timeout_s` for long answers"
            ) from error
        except (httpx.NetworkError, httpx.RemoteProtocolError) as error:  # reset, closed, died mid-answer
            return _Failure(f"connection to the vLLM server lost ({type(error).__name__}: {error})")
        except httpx.TransportError as error:  # not transient (e.g. unsupported protocol): no retry
            raise ModelCallError(f"{url}: {type(error).__name__}: {error}") from error
        if response.status_code in RETRY_STATUS:
            retry_after = None
            if response.status_code in RETRY_AFTER_STATUS:
                retry_after = retry_after_s(response.headers.get("Retry-After"), now=datetime.now(UTC))
            return _Failure(f"HTTP {response.status_code}: {_error_text(response)}", retry_after)
        if response.status_code != 200:
            raise ModelCallError(f"{url} rejected the request: HTTP {response.status_code}: {_error_text(response)}")
        try:
            return _json(response, self.base_url)
        except ModelCallError as error:
            return _Failure(str(error))

    def _client(self) -> httpx.AsyncClient:
        # A pooled client belongs to the event loop that created it; `EmotionGraph.run` makes one loop per call.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            client = self._clients[loop] = httpx.AsyncClient(timeout=self._timeout, limits=self._limits)
        return client

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _openai_message(message: ChatMessage) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            data = base64.b64encode(part.image.png_bytes).decode()
            parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


def _json(response: httpx.Response, base_url: str) -> dict[str, Any]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelCallError(f"{base_url} answered with malformed JSON ({error})") from error
    if not isinstance(payload, dict):
        raise ModelCallError(f"{base_url} answered with JSON that is not an object")
    return payload


def _choices(payload: dict[str, Any], n: int, base_url: str) -> list[dict[str, Any]]:
    """The response's choices, checked for what token-exact records need."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        raise ModelCallError(f"{base_url}: expected {n} choice(s) in the response, got {choices!r:.200}")
    if payload.get("prompt_token_ids") is None or any(c.get("token_ids") is None for c in choices):
        raise ModelCallError(
            f"{base_url} did not return token ids: EMO-R3 records exact ids, so it needs a vLLM server that "
            "supports `return_token_ids` (vLLM >= 0.10.2)"
        )
    if any(not (c.get("logprobs") or {}).get("content") and c.get("token_ids") for c in choices):
        raise ModelCallError(f"{base_url} did not return logprobs for the sampled tokens")
    return sorted(choices, key=lambda c: c.get("index", 0))


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json()
    except ValueError:
        return response.text[:300]
    # vLLM answers {"error": {"message": ...}}, older servers {"message": ...}, its API-key check {"error": "..."}
    error = detail.get("error") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    message = message or (error.get("message") if isinstance(error, dict) else error)
    return str(message or detail)[:300]
