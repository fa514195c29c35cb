"""Records every finished graph run into a TraceStore without blocking the event loop or failing the run."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence

from agents.images import PreparedImage
from graphs.trace_store import RunSource, TraceStore
from graphs.trajectory import EmotionQuery, EmotionResult

logger = logging.getLogger(__name__)


class TraceRecorder:
    """Where a graph sends its finished runs. A trace that cannot be written is logged, never raised: the
    answer the user waited for matters more than its trace."""

    def __init__(self, store: TraceStore, *, source: RunSource = "run") -> None:
        self.store = store
        self.source = source
        self.failures = 0

    async def record(
        self,
        result: EmotionResult,
        *,
        query: EmotionQuery,
        images: Sequence[PreparedImage],
        config_hash: str | None = None,
    ) -> None:
        input_ref = ", ".join(str(i) if not isinstance(i, bytes) else f"<{len(i)} bytes>" for i in query.images)
        try:
            await asyncio.to_thread(
                self.store.record_run, result, source=self.source, images=images, config_hash=config_hash,
                input_ref=input_ref,
            )
        except (sqlite3.Error, OSError) as error:
            self.failures += 1
            logger.error("could not record the trace of query %s in %s: %s", query.id, self.store.path, error)
