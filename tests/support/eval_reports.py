"""Evaluation reports written from synthetic prediction records: a plausible Mikels-8 run, a run whose labels,
ids and errors are hostile HTML and broken mathtext, and a comparison of two runs."""

from __future__ import annotations

import random
from pathlib import Path

from emo_r3.evals.compare import compare_runs
from emo_r3.evals.metrics import compute_metrics
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.evals.report import write_comparison, write_report
from emo_r3.prompts.label_sets import MIKELS_8, LabelSet

HOSTILE_LABEL = "<script>window.__pwned=1</script>"
HOSTILE_ID = '<img src=x onerror="window.__pwned=2">'
HOSTILE_ERROR = "<script>window.__pwned=3</script> | broken"
MATHTEXT_LABEL = r"$\nosuchcommand{$"  # would make matplotlib raise if it reached mathtext
HOSTILE_SET = LabelSet(
    name="hostile", labels=("calm", HOSTILE_LABEL, MATHTEXT_LABEL),
    valence={"calm": "positive", HOSTILE_LABEL: "negative", MATHTEXT_LABEL: "neutral"},
)  # fmt: skip


def mikels_run(n: int = 96, skill: float = 0.65, seed: int = 0) -> list[PredictionRecord]:
    """A plausible Mikels-8 run: mostly right, some corrections and flips, two errors, one hostile id."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        gold = MIKELS_8.labels[i % 8]
        first = gold if rng.random() < skill else rng.choice(MIKELS_8.labels)
        corrected = rng.random() < 0.25
        final = (gold if rng.random() < 0.5 else rng.choice(MIKELS_8.labels)) if corrected else first
        records.append(PredictionRecord(
            id=HOSTILE_ID if i == 5 else f"emoset-{i:04d}", status="ok", label=gold, label_set="mikels8",
            prediction="awe" if i == 5 else final, first_label=first,
            termination="accepted" if rng.random() < 0.8 else "max_rounds",
            format_ok=rng.random() < 0.9, rounds=int(corrected), accepted=rng.random() < 0.8,
            coherence_passed=[not corrected, True][: 1 + corrected], consistency_passed=[rng.random() < 0.9],
            node_latency_s={"perceive": rng.uniform(0.8, 2.0), "reason": rng.uniform(1.0, 4.0),
                            "reflect": rng.uniform(0.3, 1.0)},
            prompt_tokens=rng.randint(900, 1300), completion_tokens=rng.randint(80, 220),
        ))  # fmt: skip
    for i in (7, 11):
        records[i] = records[i].model_copy(update={
            "status": "error", "prediction": None, "first_label": None, "termination": "error", "accepted": False,
            "coherence_passed": [], "consistency_passed": [], "error": HOSTILE_ERROR if i == 7 else "timed out",
        })  # fmt: skip
    return records


def hostile_run() -> list[PredictionRecord]:
    rows = [
        ("a", "calm", "calm"),
        ("b", "calm", HOSTILE_LABEL),
        ("c", HOSTILE_LABEL, HOSTILE_LABEL),
        ("d", HOSTILE_LABEL, "calm"),
        ("e", MATHTEXT_LABEL, MATHTEXT_LABEL),
        (HOSTILE_ID, MATHTEXT_LABEL, None),
    ]
    return [PredictionRecord(id=i, status="ok", label=g, label_set="hostile", prediction=p, first_label=g)
            for i, g, p in rows]  # fmt: skip


def write_reports(root: Path) -> dict[str, tuple[Path, Path]]:
    """The Markdown and HTML files of the three reports under `root`: "mikels", "hostile" and "compare"."""
    records = mikels_run()
    meta = {"dataset": "emoset:/data/EmoSet-118K", "split": "test", "config_hash": "3f9a1c", "skipped": ["x.jpg"]}
    hostile = hostile_run()
    baseline, improved = mikels_run(skill=0.55, seed=1), mikels_run(skill=0.7, seed=1)
    comparison = compare_runs(baseline, improved, MIKELS_8, name_a="baseline", name_b="reflection")
    return {
        "mikels": write_report(compute_metrics(records, MIKELS_8), records, root / "mikels",
                               title="EMO-R3 eval: EmoSet test (synthetic)", meta=meta),
        "hostile": write_report(compute_metrics(hostile, HOSTILE_SET), hostile, root / "hostile",
                                title=f"run {HOSTILE_LABEL}", meta={"note": HOSTILE_ID}),
        "compare": write_comparison(comparison, root / "compare", title="baseline vs reflection",
                                    meta={"a": "runs/eval/a", "b": "runs/eval/b"}),
    }  # fmt: skip
