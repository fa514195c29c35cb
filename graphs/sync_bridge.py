"""Run the graph's async code from synchronous callers: scripts (no event loop), and callers already inside a
running loop (a notebook cell, LangGraph's sync `invoke` called from async code), where it runs on a private loop in
a worker thread. The caller's context variables (LangGraph's config, its stream writer) go along."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(work: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(work)`, also when this thread already runs an event loop."""
    context = contextvars.copy_context()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return context.run(asyncio.run, work)
    with ThreadPoolExecutor(1, thread_name_prefix="emo-r3-sync") as worker:
        return worker.submit(context.run, asyncio.run, work).result()
