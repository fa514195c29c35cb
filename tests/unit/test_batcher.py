"""The dynamic batcher: batches of one key up to the size limit, a failing batch rerun call by call, cancelled calls
skipped, the worker gone when idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

import emo_r3.agents.backends.transformers.batching as batching
from emo_r3.agents.backends.transformers.batching import Batcher, BatchSettings


class Doubler:
    """A `run` that doubles numbers, remembers each batch it got, and fails any batch holding a negative number."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, batch: Sequence[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(batch))
        if any(n < 0 for n in batch):
            raise ValueError(f"negative number in {list(batch)}")
        return [2 * n for n in batch]


def parity(n: int) -> int:
    return abs(n) % 2


def test_calls_of_one_key_share_a_batch_up_to_the_limit() -> None:
    run = Doubler()
    batcher = Batcher(run, parity, BatchSettings(max_size=3, wait_ms=300))
    futures = [batcher.submit(n) for n in (1, 2, 3, 5, 4, 7)]
    assert [f.result(5).result for f in futures] == [2, 4, 6, 10, 8, 14]
    assert sorted(run.batches) == [[1, 3, 5], [2, 4], [7]]


def test_max_size_one_runs_calls_one_at_a_time() -> None:
    run = Doubler()
    batcher = Batcher(run, parity, BatchSettings(max_size=1, wait_ms=300))
    futures = [batcher.submit(n) for n in (1, 3, 5)]
    assert [f.result(5).result for f in futures] == [2, 6, 10]
    assert run.batches == [[1], [3], [5]]


def test_queue_time_is_counted_apart() -> None:
    gate = threading.Event()
    batcher = Batcher(Doubler(gate), parity, BatchSettings(max_size=1, wait_ms=0))
    first, second = batcher.submit(1), batcher.submit(3)
    time.sleep(0.2)
    gate.set()
    assert first.result(5).queue_s < 0.1 <= second.result(5).queue_s


def test_a_failing_batch_is_rerun_call_by_call() -> None:
    run = Doubler()
    batcher = Batcher(run, parity, BatchSettings(max_size=4, wait_ms=300))
    good, bad, other = batcher.submit(1), batcher.submit(-3), batcher.submit(5)
    assert good.result(5).result == 2 and other.result(5).result == 10
    with pytest.raises(ValueError, match=r"negative number in \[-3\]"):
        bad.result(5)
    assert run.batches == [[1, -3, 5], [1], [-3], [5]]


def test_cancelled_calls_are_not_run() -> None:
    gate = threading.Event()
    run = Doubler(gate)
    batcher = Batcher(run, parity, BatchSettings(max_size=1, wait_ms=0))
    running, cancelled = batcher.submit(1), batcher.submit(3)
    assert cancelled.cancel()
    gate.set()
    assert running.result(5).result == 2
    later = batcher.submit(5)
    assert later.result(5).result == 10
    assert run.batches == [[1], [5]]


def test_the_worker_leaves_when_idle_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "IDLE_EXIT_S", 0.2)
    batcher = Batcher(Doubler(), parity, BatchSettings(max_size=2, wait_ms=0))
    assert batcher.submit(1).result(5).result == 2
    deadline = time.monotonic() + 5
    while any(t.name == "emo-r3-batcher" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "emo-r3-batcher" for t in threading.enumerate())
    assert batcher.submit(2).result(5).result == 4
