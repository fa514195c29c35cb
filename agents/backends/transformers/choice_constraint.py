"""Closed-set decoding: a token trie that only lets an answer spell one of the options, then stop."""

from __future__ import annotations

from typing import Any


class ChoiceTrie:
    """Token-level constraint: the answer must spell one of the option token sequences, then end with EOS."""

    def __init__(self, sequences: list[list[int]], eos_token_ids: list[int]) -> None:
        self._eos = eos_token_ids
        self._root: dict[int, Any] = {}
        for sequence in sequences:
            node = self._root
            for token in sequence:
                node = node.setdefault(token, {})
            node[-1] = {}  # end-of-option marker
        self.max_length = max(len(s) for s in sequences) + 1

    def allowed(self, generated: list[int]) -> list[int]:
        node = self._root
        for token in generated:
            if token not in node:
                return self._eos
            node = node[token]
        allowed = [t for t in node if t != -1]
        return allowed + self._eos if -1 in node else allowed or self._eos
