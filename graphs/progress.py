"""What a running graph reports as it goes: each node as it starts, with its query and correction round.

A caller passes a `ProgressCallback` to `EmotionGraph.arun` (or `run`, `abatch`, `astream_batch`); the command
line shows these events as live progress. The callback runs on the event loop: keep it quick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeStarted:
    query_id: str
    node: str  # perceive, reason, reflect or finalize
    round: int  # 0 for the first pass, +1 for every correction


ProgressCallback = Callable[[NodeStarted], None]
