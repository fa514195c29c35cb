"""Records every finished graph run into a TraceStore without blocking the event loop or failing the run."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from typing import Protocol

from emo_r3.agents.images import PreparedImage
from emo_r3.graphs.traces.store import RunSource, TraceStore
from emo_r3.graphs.trajectory import EmotionQuery, EmotionResult

logger = logging.getLogger(__name__)


class RunExporter(Protocol):
    """A second destination for finished runs, e.g. `emo_r3.graphs.traces.otel.OtelRunExporter`."""

    def export(self, result: EmotionResult, *, started_at: float | None = None, source: str = "run") -> None: ...

    def shutdown(self) -> None: ...


class TraceRecorder:
    """Where a graph sends its finished runs: the trace store, and optionally an exporter (OpenTelemetry).

    A trace that cannot be written is logged, never raised: the answer the user waited for matters more than
    its trace.
    """

    def __init__(
        self, store: TraceStore | None, *, source: RunSource = "run", exporter: RunExporter | None = None
    ) -> None:
        self.store = store
        self.source = source
        self.exporter = exporter
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
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.export, result, source=self.source)
        if self.store is None:
            return
        try:
            await asyncio.to_thread(
                self.store.record_run,
                result,
                source=self.source,
                images=images,
                config_hash=config_hash,
                input_ref=input_ref,
            )
        except (sqlite3.Error, OSError) as error:
            self.failures += 1
            logger.error("could not record the trace of query %s in %s: %s", query.id, self.store.path, error)

    def close(self) -> None:
        """Send what the exporter still queues; the store needs no closing (every run is committed)."""
        if self.exporter is not None:
            self.exporter.shutdown()
