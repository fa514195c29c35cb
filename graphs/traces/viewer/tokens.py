"""Completion tokens as a page shows them: each token's own text (decoded with the model's tokenizer when the model
is on this machine) and a colour bucket for its logprob."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.model_specs import OFFLINE_PREFIX
from emo_r3.agents.offline_models.cache import default_model_cache

logger = logging.getLogger(__name__)

# Upper logprob bound of each colour bucket (0 = confident ... last = very unlikely). Log-spaced, because a
# researcher cares about p=0.99 vs 0.9 as much as about p=0.01 vs 0.001.
LOGPROB_BUCKETS = (-0.05, -0.2, -0.5, -1.0, -2.0, -4.0, -7.0, -10.0)


class TokenDecoder:
    """Token id -> its text, from the model folder's `tokenizer.json` when the trace's model is on this machine.

    Uses the `tokenizers` library alone (no model, no transformers import), loads each tokenizer once, and
    answers None when the model is unknown here, so pages fall back to showing token ids.
    """

    def __init__(self, model_cache: Path | None = None) -> None:
        self.model_cache = model_cache or default_model_cache()
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def tokenizer_file(self, model_id: str) -> Path | None:
        if model_id.startswith(OFFLINE_PREFIX):
            kind = model_id.removeprefix(OFFLINE_PREFIX)
            candidate = self.model_cache / kind / "tokenizer.json" if kind and "/" not in kind else None
        else:
            candidate = Path(model_id).expanduser() / "tokenizer.json"
        try:
            return candidate if candidate is not None and candidate.is_file() else None
        except OSError:  # a model id that is not a usable path (too long, bad characters)
            return None

    def _tokenizer(self, model_id: str) -> Any:
        with self._lock:
            if model_id not in self._cache:
                self._cache[model_id] = _load_tokenizer(self.tokenizer_file(model_id))
            return self._cache[model_id]

    def decode(self, model_id: str, token_ids: Sequence[int]) -> list[str | None] | None:
        tokenizer = self._tokenizer(model_id)
        if tokenizer is None:
            return None
        byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
        return [_token_text(tokenizer, token_id, byte_level) if token_id >= 0 else None for token_id in token_ids]


def _load_tokenizer(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    except Exception as error:  # a broken or foreign tokenizer file must not break the page
        logger.warning("cannot load tokenizer %s: %s", path, error)
        return None


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: byte-level BPE pieces back to the exact bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _token_text(tokenizer: Any, token_id: int, byte_level: bool) -> str | None:
    """The token's own bytes; a piece of a multi-byte character shows as `\\xNN` rather than a lost `�`."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return None  # an id past the tokenizer (padded embedding rows)
    if byte_level and all(char in _BYTE_DECODER for char in piece):
        return bytes(_BYTE_DECODER[char] for char in piece).decode("utf-8", errors="backslashreplace")
    return tokenizer.decode([token_id], skip_special_tokens=False)


@dataclass(frozen=True)
class TokenView:
    text: str
    token_id: int
    logprob: str
    bucket: str
    title: str


def logprob_bucket(logprob: float | None) -> str:
    if logprob is None or math.isnan(logprob):
        return "lp-none"
    for index, bound in enumerate(LOGPROB_BUCKETS):
        if logprob >= bound:
            return f"lp{index}"
    return f"lp{len(LOGPROB_BUCKETS)}"


def token_views(call: LLMCall, decoder: TokenDecoder) -> tuple[list[TokenView], bool]:
    """One view per completion token, and whether the texts are real (else each shows its id)."""
    decoded = decoder.decode(call.model_id, call.completion_token_ids)
    texts = decoded or [None] * len(call.completion_token_ids)
    views = []
    for index, (token_id, text) in enumerate(zip(call.completion_token_ids, texts, strict=True)):
        logprob = call.logprobs[index] if index < len(call.logprobs) else None
        shown = f"#{token_id}" if text is None else _visible(text)
        number = "none" if logprob is None else f"{logprob:.4f}"
        probability = "" if logprob is None or math.isnan(logprob) else f" · p {math.exp(logprob):.3g}"
        title = f"token {index} · id {token_id} · logprob {number}{probability}"
        views.append(TokenView(shown, token_id, number, logprob_bucket(logprob), title))
    return views, decoded is not None


def _visible(text: str) -> str:
    """Whitespace-only tokens still need something to colour and hover."""
    if not text:
        return "∅"
    return text.replace("\n", "↵\n").replace("\t", "⇥\t")


def legend() -> list[tuple[str, str]]:
    """(bucket class, probability range) for the colour key above the tokens."""
    rows = [(f"lp{i}", f"p ≥ {math.exp(bound):.2g}") for i, bound in enumerate(LOGPROB_BUCKETS)]
    return [*rows, (f"lp{len(LOGPROB_BUCKETS)}", f"p < {math.exp(LOGPROB_BUCKETS[-1]):.2g}")]
