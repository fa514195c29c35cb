"""What the graph knows of trace recording: somewhere to hand each finished run. The trace store, OpenTelemetry
export and anything else live behind this protocol (`emo_r3.graphs.traces.recorder.TraceRecorder` is one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from emo_r3.agents.images import PreparedImage
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult


class RunRecorder(Protocol):
    async def record(
        self,
        result: EmotionResult,
        *,
        query: EmotionQuery,
        images: Sequence[PreparedImage],
        config_hash: str | None = None,
    ) -> str | None:
        """Keep one finished run and return its id, or None when it could not be kept: must not raise for that (the
        answer matters more than its trace)."""
        ...

    def close(self) -> None:
        """Flush whatever is still queued."""
        ...
