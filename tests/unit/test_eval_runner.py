"""evals/runner.py: which items still need a run, graph evaluation into predictions.jsonl, and the paper-parity SET
evaluation (exact boxed label, lower-cased, no normalisation), on the real graph with scripted models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from image_factory import png_bytes
from PIL import Image
from scripted_trace_runs import SET_ANSWER, respond

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.evals.items import EvalItem, LoadedDataset
from emo_r3.evals.predictions import PredictionRecord
from emo_r3.evals.runner import evaluate_graph, evaluate_paper_parity, pending_items
from emo_r3.graphs import EmotionGraph, GraphConfig
from emo_r3.graphs.results_file import ResultsFile
from emo_r3.prompts import MIKELS_8, render


def _png(path: Path, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    path.write_bytes(png_bytes(Image.fromarray(pixels)))
    return path


def _item(tmp_path: Path, item_id: str, label: str, text: str | None = None) -> EvalItem:
    return EvalItem(id=item_id, image=_png(tmp_path / f"{item_id}.png"), label=label, label_set="mikels8", text=text)


def _dataset(items: list[EvalItem]) -> LoadedDataset:
    return LoadedDataset(kind="folder", path=Path("data"), split=None, label_set="mikels8", items=items)


def _respond(messages, sampling, choices):
    """The graph answers fear when the query text mentions a storm, contentment otherwise."""
    if not choices and "<step2>" in messages[-1].text and "storm" in messages[-1].text:
        return SET_ANSWER.replace("contentment", "fear")
    return respond(messages, sampling, choices)


def _graph(reasoner: ScriptedChatModel | None = None) -> EmotionGraph:
    model = ScriptedChatModel(_respond)
    models = {"perceiver": model, "reasoner": reasoner or model, "reflector": model}
    return EmotionGraph.from_config(GraphConfig(), models=models)


def test_pending_items_skip_done_ids_and_retry_errors_only_when_asked(tmp_path: Path) -> None:
    items = [_item(tmp_path, name, "awe") for name in ("a", "b", "c", "d")]
    results = ResultsFile(tmp_path / "predictions.jsonl", PredictionRecord)
    results.append(PredictionRecord(id="a", status="ok", label="awe", label_set="mikels8", prediction="awe"))
    results.append(PredictionRecord(id="c", status="error", label="awe", label_set="mikels8", error="boom"))

    assert [item.id for item in pending_items(_dataset(items), results, retry_errors=False)] == ["b", "d"]
    assert [item.id for item in pending_items(_dataset(items), results, retry_errors=True)] == ["b", "c", "d"]


def test_evaluate_graph_appends_one_prediction_per_item(tmp_path: Path) -> None:
    items = [
        _item(tmp_path, "calm", "contentment"),
        _item(tmp_path, "stormy", "fear", text="a storm at sea"),
        _item(tmp_path, "wrong", "awe"),
    ]
    path = tmp_path / "predictions.jsonl"
    seen: list[PredictionRecord] = []

    asyncio.run(evaluate_graph(_graph(), items, ResultsFile(path, PredictionRecord), on_record=seen.append))

    lines = [PredictionRecord.model_validate_json(line) for line in path.read_bytes().splitlines()]
    assert lines == seen
    assert sorted(record.id for record in lines) == ["calm", "stormy", "wrong"]
    by_id = {record.id: record for record in lines}
    expected = {"calm": ("contentment", "contentment"), "stormy": ("fear", "fear"), "wrong": ("awe", "contentment")}
    for item_id, (gold, prediction) in expected.items():
        record = by_id[item_id]
        assert (record.label, record.prediction, record.first_label) == (gold, prediction, prediction)
        assert (record.status, record.termination, record.accepted) == ("ok", "accepted", True)
        assert record.label_set == "mikels8" and record.format_ok
        assert record.prompt_tokens > 0 and record.completion_tokens > 0
        assert {"perceive", "reason", "reflect"} <= set(record.node_latency_s)
    assert len({record.run_id for record in lines}) == 3 and all(record.run_id for record in lines)


def test_evaluate_graph_records_an_unreadable_image_as_an_error(tmp_path: Path) -> None:
    missing = EvalItem(id="gone", image=tmp_path / "gone.png", label="awe", label_set="mikels8")
    results = ResultsFile(tmp_path / "predictions.jsonl", PredictionRecord)

    asyncio.run(evaluate_graph(_graph(), [missing, _item(tmp_path, "calm", "contentment")], results))

    gone = results.records["gone"]
    assert (gone.status, gone.termination, gone.prediction, gone.label) == ("error", "error", None, "awe")
    assert "no such file" in gone.error
    assert results.records["calm"].status == "ok"
    assert not results.done("gone", retry_errors=True)


def _set(label: str) -> str:
    steps = "<step1>A scene.</step1><step2>How it feels.</step2><step3>valence: positive; arousal: low</step3>"
    return f"{steps} \\boxed{{{label}}}"


class _ParityModel(ScriptedChatModel):
    """Answers by image file name and remembers every call it got."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(self._answer)
        self.answers = answers
        self.calls: list[tuple[list, object]] = []

    def _answer(self, messages, sampling, choices):
        self.calls.append((messages, sampling))
        [image] = messages[-1].images
        return self.answers[Path(image.source).stem]


def test_paper_parity_scores_the_lower_cased_boxed_label_exactly(tmp_path: Path) -> None:
    answers = {"awe": _set("Awe"), "grief": _set("grief"), "plain": "It is \\boxed{ Contentment }."}
    model = _ParityModel(answers)
    graph = _graph(reasoner=model)
    items = [
        _item(tmp_path, "awe", "awe"),
        _item(tmp_path, "grief", "sadness"),
        _item(tmp_path, "plain", "contentment"),
        EvalItem(id="missing", image=tmp_path / "missing.png", label="fear", label_set="mikels8"),
    ]
    results = ResultsFile(tmp_path / "predictions.jsonl", PredictionRecord)
    seen: list[PredictionRecord] = []

    asyncio.run(evaluate_paper_parity(graph, items, results, max_concurrency=2, on_record=seen.append))

    assert sorted(record.id for record in seen) == ["awe", "grief", "missing", "plain"]
    records = ResultsFile(tmp_path / "predictions.jsonl", PredictionRecord).records
    assert {item_id: records[item_id].prediction for item_id in ("awe", "grief", "plain")} == {
        "awe": "awe",
        "grief": "grief",
        "plain": "contentment",
    }
    for item_id in ("awe", "grief", "plain"):
        record = records[item_id]
        assert (record.status, record.termination, record.first_label) == ("ok", "accepted", record.prediction)
        assert record.label_set == "mikels8" and "set" in record.node_latency_s
        assert record.completion_tokens == len(answers[item_id].encode())
    assert records["grief"].label == "sadness"
    assert records["awe"].format_ok and records["grief"].format_ok and not records["plain"].format_ok
    missing = records["missing"]
    assert (missing.status, missing.termination, missing.prediction, missing.label) == ("error", "error", None, "fear")
    assert "no such file" in missing.error
    assert len(model.calls) == 3
    expected_prompt = render("set_single", labels=MIKELS_8.labels)
    for messages, sampling in model.calls:
        assert len(messages) == 1 and messages[0].role == "user" and messages[0].text == expected_prompt
        assert sampling == graph.config.roles["reasoner"].sampling


@pytest.mark.parametrize("max_concurrency", [1, 4])
def test_paper_parity_never_calls_the_other_roles(tmp_path: Path, max_concurrency: int) -> None:
    def refuse(messages, sampling, choices):
        raise AssertionError("only the reasoner's model answers in paper parity")

    model = _ParityModel({"a": _set("fear"), "b": _set("amusement")})
    other = ScriptedChatModel(refuse)
    graph = EmotionGraph.from_config(GraphConfig(), models={"perceiver": other, "reasoner": model, "reflector": other})
    items = [_item(tmp_path, "a", "fear"), _item(tmp_path, "b", "awe")]
    results = ResultsFile(tmp_path / "predictions.jsonl", PredictionRecord)

    asyncio.run(evaluate_paper_parity(graph, items, results, max_concurrency=max_concurrency))

    assert {item_id: record.prediction for item_id, record in results.records.items()} == {
        "a": "fear",
        "b": "amusement",
    }
