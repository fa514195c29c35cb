"""Records every finished graph run into a TraceStore without blocking the event loop or failing the run."""

from __future__ import annotations

import asyncio
import logging
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
    its trace. The caller can still tell: `record` returns the stored run's id (None when it was not stored),
    `failures` counts the runs that could not be stored, and `last_error` says why the latest one was not (the
    store's message: file, real cause, what to do), so nobody is pointed at a trace that does not exist.
    """

    def __init__(
        self, store: TraceStore | None, *, source: RunSource = "run", exporter: RunExporter | None = None
    ) -> None:
        self.store = store
        self.source = source
        self.exporter = exporter
        self.failures = 0  # runs the store could not keep
        self.last_error: str | None = None  # why the latest of them was not kept; later successes do not clear it

    async def record(
        self,
        result: EmotionResult,
        *,
        query: EmotionQuery,
        images: Sequence[PreparedImage],
        config_hash: str | None = None,
    ) -> str | None:
        """Store the run; its id once it is committed, or None (no store, or it could not be written: see
        `last_error`). Never raises for a run it cannot keep."""
        if self.exporter is not None:
            try:
                await asyncio.to_thread(self.exporter.export, result, source=self.source)
            except Exception as error:  # an exporter must not cost the run its stored trace
                logger.error("could not export the run of query %s: %s", query.id, error)
        if self.store is None:
            return None
        try:
            input_ref = ", ".join(str(i) if not isinstance(i, bytes) else f"<{len(i)} bytes>" for i in query.images)
            return await asyncio.to_thread(
                self.store.record_run,
                result,
                source=self.source,
                images=images,
                config_hash=config_hash,
                input_ref=input_ref,
            )
        except Exception as error:  # TraceStoreError (full disk, damaged file ...) or anything unforeseen
            self.failures += 1
            self.last_error = str(error) or type(error).__name__
            logger.error("could not record the trace of query %s: %s", query.id, self.last_error)
            return None

    def close(self) -> None:
        """Send what the exporter still queues; the store needs no closing (every run is committed)."""
        if self.exporter is not None:
            self.exporter.shutdown()
