"""evals/runner.py on a disk that fills up: both evaluations stop at the first prediction that cannot be written
(no item runs after it), keep every prediction written before it, and the same file resumes the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from image_factory import png_bytes
from PIL import Image
from scripted_trace_runs import respond
from simulated_disk import SimulatedDisk, simulated

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.evals.items import EvalItem
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.evals.runner import evaluate_graph, evaluate_paper_parity
from emo_r3.graphs import EmotionGraph, GraphConfig
from emo_r3.graphs.results_file import ResultsFile, ResultsWriteError


class CountingGraph:
    """The real graph on a scripted model that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        model = ScriptedChatModel(self._respond)
        self.graph = EmotionGraph.from_config(
            GraphConfig(), models=dict.fromkeys(("perceiver", "reasoner", "reflector"), model)
        )

    def _respond(self, messages, sampling, choices):
        self.calls += 1
        return respond(messages, sampling, choices)


def _items(folder: Path, count: int) -> list[EvalItem]:
    items = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (12, 16, 3), dtype=np.uint8)
        image = folder / f"{index}.png"
        image.write_bytes(png_bytes(Image.fromarray(pixels)))
        items.append(EvalItem(id=f"item-{index}", image=image, label="awe", label_set="mikels8"))
    return items


@pytest.mark.parametrize("evaluate", [evaluate_graph, evaluate_paper_parity], ids=["graph", "paper-parity"])
def test_a_write_error_stops_the_eval_cleanly_and_the_same_file_resumes(tmp_path: Path, evaluate) -> None:
    path, items, counting = tmp_path / "predictions.jsonl", _items(tmp_path, 8), CountingGraph()

    async def run_until_the_disk_is_full() -> tuple[ResultsWriteError, int]:
        with ResultsFile(path, PredictionRecord) as results, simulated(SimulatedDisk(free=900, chunk=64)):
            with pytest.raises(ResultsWriteError) as raised:
                await evaluate(counting.graph, items, results, max_concurrency=3)
            calls_at_error = counting.calls
            await asyncio.sleep(0.3)  # time in which runs left going would call the model again
            assert counting.calls == calls_at_error, "no item runs after the write error"
            return raised.value, len(results.records)

    error, in_memory = asyncio.run(run_until_the_disk_is_full())

    assert path.read_bytes().endswith(b"\n")
    kept = ResultsFile(path, PredictionRecord).records
    assert 1 <= error.kept == len(kept) == in_memory < len(items)
    pending = [item for item in items if item.id not in kept]
    with ResultsFile(path, PredictionRecord) as results:
        asyncio.run(evaluate(CountingGraph().graph, pending, results))
    assert sorted(ResultsFile(path, PredictionRecord).records) == sorted(item.id for item in items)
    assert len(path.read_bytes().splitlines()) == len(items), "nothing written twice"
