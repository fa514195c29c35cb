"""Dynamic batching: concurrent calls to one in-process model are gathered into shared forward passes.

A worker thread takes the oldest waiting request, gathers up to `max_size` requests it can share a batch with (the
same key) while they keep arriving less than `wait_ms` apart, and runs them together; requests that arrive
meanwhile form the next batch. The worker exits when idle or when the program exits, so a model nobody calls holds
no thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Request = TypeVar("Request")
Result = TypeVar("Result")

IDLE_EXIT_S = 2.0
IDLE_POLL_S = 0.1
MAX_GATHER_WAITS = 10


class BatchSettings(BaseModel):
    """How an in-process model batches concurrent calls; `max_size: 1` runs one call at a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size: int = Field(16, ge=1, description="most calls in one forward pass")
    wait_ms: float = Field(
        20.0, ge=0, description="a batch starts once no call has joined it for this long (or it is full)"
    )


@dataclass(frozen=True)
class Batched(Generic[Result]):
    """A request's result and the time it waited in the queue before its batch started."""

    result: Result
    queue_s: float


@dataclass(eq=False)
class _Waiting(Generic[Request, Result]):
    request: Request
    key: Hashable
    future: Future[Batched[Result]] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher(Generic[Request, Result]):
    """Runs requests through `run` (a batch in, one result per request out, in order) in batches of one key.

    When a batch fails, its requests are run again one by one, so one bad request fails alone.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Request]], list[Result]],
        key: Callable[[Request], Hashable],
        settings: BatchSettings,
    ) -> None:
        self._run = run
        self._key = key
        self.settings = settings
        self._waiting: list[_Waiting[Request, Result]] = []
        self._changed = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, request: Request) -> Future[Batched[Result]]:
        waiting = _Waiting[Request, Result](request, self._key(request))
        with self._changed:
            self._waiting.append(waiting)
            self._changed.notify()
            if self._worker is None:
                # Not a daemon: the program's exit waits for the batch in progress instead of killing it inside torch.
                self._worker = threading.Thread(target=self._work, name="emo-r3-batcher")
                self._worker.start()
        return waiting.future

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            if batch:
                self._run_batch(batch)

    def _next_batch(self) -> list[_Waiting[Request, Result]] | None:
        """The oldest request and up to `max_size - 1` more of its key (see `_gather`);
        None (the worker leaves) once idle for `IDLE_EXIT_S` or when the program is exiting."""
        with self._changed:
            idle_since = time.perf_counter()
            while not self._waiting:
                exiting = not threading.main_thread().is_alive()
                if exiting or time.perf_counter() - idle_since > IDLE_EXIT_S:
                    self._worker = None
                    return None
                self._changed.wait(IDLE_POLL_S)
            key = self._waiting[0].key
            same = self._gather(key)
            batch = same[: self.settings.max_size]
            taken = {id(w) for w in batch}
            self._waiting = [w for w in self._waiting if id(w) not in taken]
        # A caller that stopped waiting (its task was cancelled, e.g. the program is stopping) needs no generation.
        return [w for w in batch if w.future.set_running_or_notify_cancel()]

    def _gather(self, key: Hashable) -> list[_Waiting[Request, Result]]:
        """Waiting requests of `key`, after waiting while more keep arriving: until `wait_ms` pass with no new one,
        `max_size` are there, or `MAX_GATHER_WAITS` × `wait_ms` in all (the caller holds the condition's lock)."""
        gap = self.settings.wait_ms / 1000
        now = time.perf_counter()
        quiet_at, give_up_at = now + gap, now + MAX_GATHER_WAITS * gap
        same = [w for w in self._waiting if w.key == key]
        while len(same) < self.settings.max_size and (left := min(quiet_at, give_up_at) - time.perf_counter()) > 0:
            self._changed.wait(left)
            arrived = [w for w in self._waiting if w.key == key]
            if len(arrived) > len(same):  # company came: give the next one another `wait_ms`
                quiet_at = time.perf_counter() + gap
            same = arrived
        return same

    def _run_batch(self, batch: list[_Waiting[Request, Result]]) -> None:
        started = time.perf_counter()
        try:
            results = self._run([w.request for w in batch])
        except Exception as error:  # handed to the callers, who raise it
            if len(batch) > 1:
                for waiting in batch:
                    self._run_batch([waiting])
            else:
                batch[0].future.set_exception(error)
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.future.set_result(Batched(result, queue_s=started - waiting.queued_at))
