"""`evaluate(graph, dataset)`: an evaluation from Python, on a loaded dataset or a Hugging Face `datasets.Dataset`.

```python
from emo_r3.evals.datasets import HFColumns
from emo_r3.evals.evaluation import evaluate
result = evaluate(graph, hf_dataset, columns=HFColumns(label="emotion"), limit=200, out="runs/eval/mine")
print(result.metrics.accuracy, result.skipped)
```

It runs what `emo-r3 eval` runs (the graph, or `paper_parity`), without the report. With `out`, predictions go to
`out/predictions.jsonl` and a second call with the same folder only runs the items not done yet; without it they
live in a temporary folder for the call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from emo_r3.evals.datasets import HFColumns, from_hf_dataset
from emo_r3.evals.items import LoadedDataset
from emo_r3.evals.metrics import EvalMetrics, compute_metrics
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.evals.runner import evaluate_graph, evaluate_paper_parity, pending_items
from emo_r3.graphs.emotion_graph import EmotionGraph
from emo_r3.graphs.results_file import ResultsFile
from emo_r3.graphs.sync_bridge import run_sync
from emo_r3.prompts import LabelSet, get_label_set

PREDICTIONS = "predictions.jsonl"


class Evaluation(BaseModel):
    """The metrics, one prediction per evaluated item (in the dataset's id order), and the inputs that were skipped."""

    metrics: EvalMetrics
    predictions: list[PredictionRecord]
    skipped: list[str]


def evaluate(graph: EmotionGraph, dataset: LoadedDataset | Any, **options: Any) -> Evaluation:
    """`aevaluate` for synchronous code (inside a running event loop, e.g. a notebook, it runs on its own loop)."""
    return run_sync(aevaluate(graph, dataset, **options))


async def aevaluate(
    graph: EmotionGraph,
    dataset: LoadedDataset | Any,
    *,
    columns: HFColumns | None = None,
    limit: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    max_concurrency: int = 4,
    paper_parity: bool = False,
    retry_errors: bool = False,
) -> Evaluation:
    """Evaluate `graph` on `dataset`: a `LoadedDataset` (from `load_dataset`), or a `datasets.Dataset`, read as an
    `hf:` dataset is (`columns`, then a `limit` sample drawn with `seed`). Raises DatasetError for a dataset that
    cannot be read and ValueError when no item is usable."""
    if isinstance(dataset, LoadedDataset):
        if columns is not None or limit is not None:
            raise ValueError("columns and limit apply to a datasets.Dataset; this dataset is already loaded")
        loaded = dataset
    else:
        loaded = from_hf_dataset(dataset, columns=columns, limit=limit, seed=seed)
    if not loaded.items:
        raise ValueError(f"no usable item in the dataset; skipped: {loaded.skipped[:5]}")
    with tempfile.TemporaryDirectory(prefix="emo-r3-eval-") as scratch:
        folder = Path(out) if out is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        with ResultsFile(folder / PREDICTIONS, PredictionRecord) as results:
            items = pending_items(loaded, results, retry_errors)
            run = evaluate_paper_parity if paper_parity else evaluate_graph
            await run(graph, items, results, max_concurrency=max_concurrency)
            records = [results.records[item.id] for item in loaded.items if item.id in results.records]
    metrics = compute_metrics(records, scoring_label_set(loaded))
    return Evaluation(metrics=metrics, predictions=records, skipped=loaded.skipped)


def scoring_label_set(loaded: LoadedDataset) -> LabelSet:
    """The dataset's label set; for per-item candidate sets (VECBench) the union of every item's labels."""
    if loaded.label_set != "per-item":
        return get_label_set(loaded.label_set)
    return get_label_set(sorted({label for item in loaded.items for label in get_label_set(item.label_set).labels}))
