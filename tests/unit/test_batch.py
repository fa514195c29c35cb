"""graphs/batch.py: items from a folder or JSONL (bad lines become items with a problem), and resumable batch runs
of the real graph on a scripted model into a real results file."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from image_factory import png_bytes
from PIL import Image
from scripted_trace_runs import SET_ANSWER, respond
from simulated_disk import SimulatedDisk, simulated

from emo_r3.agents.backends.scripted import ScriptedChatModel
from emo_r3.agents.chat_model import ModelCallError
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.graphs.batch import BatchInputError, BatchItem, BatchRecord, read_batch_items, run_batch
from emo_r3.graphs.results_file import ResultsFile, ResultsWriteError


def _write_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    path.write_bytes(png_bytes(Image.fromarray(pixels)))
    return path


def test_folder_items_are_found_recursively_with_any_case_of_extension(tmp_path: Path) -> None:
    for name in ("b.PNG", "sub/a.jpg", "sub/deeper/c.JpEg", "sub/d.webp"):
        _write_png(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "e.png.bak").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()

    items = list(read_batch_items(tmp_path))

    ids = ["b.PNG", "sub/a.jpg", "sub/d.webp", "sub/deeper/c.JpEg"]
    assert [item.id for item in items] == ids
    for item, item_id in zip(items, ids, strict=True):
        assert item.problem is None
        assert item.query.id == item_id
        assert item.query.images == [tmp_path / item_id]


def test_a_missing_source_is_a_batch_input_error(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="no such folder or JSONL file"):
        list(read_batch_items(tmp_path / "nowhere.jsonl"))


def test_jsonl_items_resolve_images_against_the_file_and_turn_bad_lines_into_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    absolute = str(tmp_path / "elsewhere" / "y.png")
    lines = [
        json.dumps({"id": "one", "image": "imgs/x.png"}),
        "",
        "   ",
        json.dumps({"id": "many", "images": ["imgs/x.png", absolute], "text": " a storm ", "label_set": "ekman7"}),
        "{not json",
        "[1, 2]",
        json.dumps({"id": "no-image", "text": "hello"}),
        json.dumps({"image": "z.png"}),
        json.dumps({"id": "both", "images": ["a.png"], "image": "b.png"}),
        json.dumps({"id": 7, "image": 5}),
    ]
    source = dataset / "queries.jsonl"
    source.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)

    items = {item.id: item for item in read_batch_items(source)}

    assert list(items) == ["one", "many", "line-5", "line-6", "no-image", "line-8", "both", "7"]
    assert items["one"].query == EmotionQuery(id="one", images=[str(dataset / "imgs" / "x.png")])
    many = items["many"].query
    assert many.images == [str(dataset / "imgs" / "x.png"), absolute]
    assert (many.text, many.label_set) == ("a storm", "ekman7")
    assert items["line-8"].query.images == [str(dataset / "z.png")]
    assert items["both"].query.images == [str(dataset / "a.png")]
    for item_id, number in (("line-5", 5), ("line-6", 6), ("no-image", 7), ("7", 10)):
        assert items[item_id].query is None
        assert items[item_id].problem.startswith(f"line {number}: ")
        assert "\n" not in items[item_id].problem
    assert "JSON object" in items["line-6"].problem


@pytest.mark.parametrize(
    ("fields", "images"),
    [
        ({"images": "photo.png"}, ["photo.png"]),
        ({"image": "photo.png"}, ["photo.png"]),
        ({"images": ["a.png", "b.png"]}, ["a.png", "b.png"]),
        ({"image": ["a.png", "b.png"]}, ["a.png", "b.png"]),
        ({"images": [], "image": "b.png"}, ["b.png"]),
        ({"images": None, "image": "b.png"}, ["b.png"]),
        ({"images": "sub/../x.png"}, ["sub/../x.png"]),
    ],
    ids=["images-string", "image-string", "images-list", "image-list", "images-empty", "images-null", "dot-dot-kept"],
)
def test_images_given_as_a_string_is_one_image_or_a_problem(tmp_path: Path, fields: dict, images: list[str]) -> None:
    source = tmp_path / "queries.jsonl"
    source.write_text(json.dumps({"id": "x", **fields}) + "\n")

    [item] = read_batch_items(source)

    assert item.problem is None
    assert item.query.images == [str(tmp_path / image) for image in images]


BAD_LINES = {
    "id-null": ({"id": None, "image": "a.png"}, "id must be a non-empty string or a number, not null"),
    "id-list": ({"id": ["a"], "image": "a.png"}, 'id must be a non-empty string or a number, not ["a"]'),
    "id-object": ({"id": {"a": 1}, "image": "a.png"}, "id must be a non-empty string or a number, not {"),
    "id-bool": ({"id": True, "image": "a.png"}, "id must be a non-empty string or a number, not true"),
    "id-empty": ({"id": "", "image": "a.png"}, "id must be a non-empty string or a number"),
    "images-number": ({"images": 5}, "images must be a path or a list of paths, not 5"),
    "images-object": ({"images": {"path": "a.png"}}, "images must be a path or a list of paths, not {"),
    "images-false": ({"images": False, "image": "a.png"}, "images must be a path or a list of paths, not false"),
    "image-number": ({"image": 3.5}, "image must be a path or a list of paths, not 3.5"),
    "images-item-number": ({"images": ["a.png", 7]}, "images[1] must be a path (a string), not 7"),
    "images-item-null": ({"images": ["a.png", None]}, "images[1] must be a path (a string), not null"),
    "image-nul": ({"image": "a\u0000.png"}, "image holds a NUL character"),
    "image-surrogate": ('{"image": "\\ud800.png"}', "invalid \\u escape (a lone surrogate)"),
    "text-surrogate": ('{"text": "\\udfff"}', "invalid \\u escape (a lone surrogate)"),
    "deep-array": ("[" * 100_000, "the JSON is nested too deeply to read"),
    "deep-object": ('{"a": ' * 100_000, "the JSON is nested too deeply to read"),
    "huge-number": ("1" * 5_000, "digits"),
}


@pytest.mark.parametrize(("line", "says"), BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_jsonl_line_is_a_problem_naming_the_line_never_an_exception(tmp_path: Path, line, says: str) -> None:
    source = tmp_path / "queries.jsonl"
    good = json.dumps({"id": "good", "image": "a.png"})
    source.write_text("\n".join([good, line if isinstance(line, str) else json.dumps(line), good]) + "\n")

    items = list(read_batch_items(source))

    assert [item.id for item in items] == ["good", "line-2", "good"]
    assert items[1].query is None and items[1].problem.startswith("line 2: ")
    assert says in items[1].problem and "\n" not in items[1].problem


@pytest.mark.parametrize(("value", "item_id"), [(7, "7"), (-1, "-1"), (2.5, "2.5"), ("a b/c", "a b/c")])
def test_a_number_id_becomes_its_string(tmp_path: Path, value, item_id: str) -> None:
    source = tmp_path / "queries.jsonl"
    source.write_text(json.dumps({"id": value, "image": "a.png"}) + "\n")

    [item] = read_batch_items(source)

    assert item.id == item.query.id == item_id and item.problem is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
QUERY_LIKE = st.fixed_dictionaries(
    {}, optional={key: JSON_VALUES for key in ("id", "images", "image", "text", "label_set")}
).map(json.dumps)
ANY_LINE = st.text(alphabet=st.characters(blacklist_characters="\n")) | JSON_VALUES.map(json.dumps) | QUERY_LIKE


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(ANY_LINE, max_size=8))
@example(lines=["\ud800", '{"id": "a\udfff", "image": "b\udc80.png"}'])
@example(lines=['{"id": "\\ud800", "image": "a.png"}', "", " \r\t", "[" * 100_000, '{"image": "a\\u0000"}'])
def test_any_jsonl_text_yields_one_recordable_item_per_non_blank_line_and_never_raises(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "queries.jsonl"
        # surrogatepass: a lone surrogate in the text is written as bytes that are not UTF-8, as in a damaged file.
        source.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")

        items = list(read_batch_items(source))

    numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
    assert len(items) == len(numbers)
    for item, number in zip(items, numbers, strict=True):
        assert (item.query is None) != (item.problem is None)
        if item.problem is not None:
            assert item.problem.startswith(f"line {number}: ") and "\n" not in item.problem
        else:
            assert item.query.id == item.id
            for image in item.query.images:
                assert os.path.isabs(image) and "\0" not in image
                os.fsencode(image)  # a path the OS can be asked about
        BatchRecord(id=item.id, status="error", error=item.problem).model_dump_json()  # every item can be recorded


def test_a_symlink_loop_image_in_jsonl_fails_as_that_items_image_error(tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "linked").symlink_to(tmp_path / "images")
    _write_png(tmp_path / "images" / "ok.png")
    source = tmp_path / "queries.jsonl"
    lines = [{"id": "loop", "image": "loop.png"}, {"id": "ok", "image": "linked/ok.png"}]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    items = list(read_batch_items(source))
    assert [item.query.images for item in items] == [[str(tmp_path / "loop.png")], [str(tmp_path / "linked/ok.png")]]

    _summary, records = _run(_Graph(), items, ResultsFile(tmp_path / "results.jsonl", BatchRecord))
    by_id = {record.id: record for record in records}
    assert by_id["loop"].status == "error" and "loop.png: cannot be read (Too many levels" in by_id["loop"].error
    assert by_id["ok"].status == "ok", "symlinks that do resolve still work (they are followed when read)"


def test_folder_entries_that_are_no_readable_file_become_problems_never_silence(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    _write_png(folder / "a.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "gone.JPG").symlink_to(folder / "missing.jpg")
    os.mkfifo(folder / "pipe.webp")
    (folder / "album.png").mkdir()  # a folder named like an image is a folder, walked into, not an item

    items = {item.id: item for item in read_batch_items(folder)}

    assert list(items) == ["a.png", "loop.png", "pipe.webp", "sub/gone.JPG"]
    assert items["a.png"].query is not None
    assert items["loop.png"].problem == "loop.png: cannot be read (Too many levels of symbolic links)"
    assert items["pipe.webp"].problem == "pipe.webp: not a regular file"
    assert items["sub/gone.JPG"].problem == "sub/gone.JPG: a broken symbolic link (what it points to is missing)"

    _summary, records = _run(_Graph(), list(items.values()), ResultsFile(tmp_path / "results.jsonl", BatchRecord))
    assert {record.id: record.status for record in records} == {
        "a.png": "ok", "loop.png": "error", "pipe.webp": "error", "sub/gone.JPG": "error"
    }  # fmt: skip


def test_an_unreadable_folder_is_a_problem_item_and_an_unreadable_source_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    _write_png(folder / "a.png")
    _write_png(folder / "private" / "b.png")
    denied = {folder / "private"}
    real_scandir = os.scandir

    def scandir(path):  # simulates folders without read permission (the tests may run as root, which reads all)
        if Path(path) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)

    items = list(read_batch_items(folder))
    assert [(item.id, item.problem) for item in items] == [
        ("private/", "private/: cannot read this folder (Permission denied)"), ("a.png", None)
    ]  # fmt: skip

    denied.add(folder)
    with pytest.raises(BatchInputError, match=r"photos: cannot read this folder \(Permission denied\)"):
        list(read_batch_items(folder))


def test_an_unreadable_jsonl_file_is_a_batch_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "queries.jsonl"
    source.write_text(json.dumps({"id": "a", "image": "a.png"}) + "\n")

    def denied(*args, **kwargs):  # simulates a file without read permission (root reads all)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(source))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(BatchInputError, match=r"queries\.jsonl: cannot be read \(Permission denied\)"):
        list(read_batch_items(source))


def _respond_or_fail(messages, sampling, choices):
    if any("broken" in (image.source or "") for message in messages for image in message.images):
        raise ModelCallError("the server fell over")
    if not choices and "<step2>" in messages[-1].text and "storm" in messages[-1].text:
        return SET_ANSWER.replace("contentment", "fear")
    return respond(messages, sampling, choices)


class _Graph:
    """The real graph on a scripted model, remembering which query ids it was asked to run."""

    def __init__(self) -> None:
        model = ScriptedChatModel(self._respond)
        roles = ("perceiver", "reasoner", "reflector")
        self.graph = EmotionGraph.from_config(GraphConfig(), models=dict.fromkeys(roles, model))
        self.asked: list[str] = []
        self.model_calls = 0

    def _respond(self, messages, sampling, choices):
        self.model_calls += 1
        return _respond_or_fail(messages, sampling, choices)

    def astream_batch(self, queries, *, max_concurrency, progress=None):
        queries = list(queries)
        self.asked += [query.id for query in queries]
        return self.graph.astream_batch(queries, max_concurrency=max_concurrency, progress=progress)


def _item(tmp_path: Path, item_id: str, text: str | None = None) -> BatchItem:
    image = _write_png(tmp_path / "images" / f"{item_id}.png")
    return BatchItem(id=item_id, query=EmotionQuery(id=item_id, images=[image], text=text))


def _run(graph: _Graph, items: list[BatchItem], results: ResultsFile[BatchRecord], **options):
    seen: list[BatchRecord] = []
    summary = asyncio.run(run_batch(graph, items, results, max_concurrency=2, on_record=seen.append, **options))
    return summary, seen


def _lines(path: Path) -> list[BatchRecord]:
    return [BatchRecord.model_validate_json(line) for line in path.read_bytes().splitlines()]


def test_run_batch_records_every_new_item_once_and_skips_what_is_done(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, BatchRecord)
    results.append(BatchRecord(id="done", status="ok", label="awe"))
    results.append(BatchRecord(id="failed", status="error", error="earlier failure"))
    items = [
        _item(tmp_path, "done"),
        _item(tmp_path, "failed"),
        _item(tmp_path, "calm"),
        _item(tmp_path, "stormy", text="a storm at sea"),
        _item(tmp_path, "calm"),
        BatchItem(id="line-9", problem="line 9: Expecting value"),
        _item(tmp_path, "broken"),
    ]
    graph = _Graph()

    summary, seen = _run(graph, items, results)

    assert summary.model_dump() == {
        "total": 7, "skipped": 2, "duplicates": 1, "ok": 2, "errors": 2, "errors_before": 1, "failed": 3,
    }  # fmt: skip
    assert sorted(graph.asked) == ["broken", "calm", "stormy"]
    appended = _lines(path)[2:]
    assert seen == appended
    assert sorted(record.id for record in appended) == ["broken", "calm", "line-9", "stormy"]
    by_id = {record.id: record for record in appended}
    assert (by_id["calm"].status, by_id["calm"].label, by_id["calm"].termination) == ("ok", "contentment", "accepted")
    assert (by_id["stormy"].label, by_id["stormy"].label_set) == ("fear", "mikels8")
    assert by_id["calm"].run_id and by_id["calm"].run_id != by_id["stormy"].run_id
    assert by_id["calm"].path[0] == "perceive" and by_id["calm"].trajectory is None
    assert by_id["line-9"].status == "error" and by_id["line-9"].error == "bad input: line 9: Expecting value"
    assert by_id["broken"].status == "error" and "the server fell over" in by_id["broken"].error
    assert ResultsFile(path, BatchRecord).records["done"].label == "awe"


def test_run_batch_retries_errors_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, BatchRecord)
    results.append(BatchRecord(id="ok", status="ok", label="awe"))
    results.append(BatchRecord(id="failed", status="error", error="earlier failure"))
    results.append(BatchRecord(id="bad", status="error", error="bad input: line 3"))
    items = [_item(tmp_path, "ok"), _item(tmp_path, "failed"), BatchItem(id="bad", problem="line 3: not JSON")]

    graph = _Graph()
    summary, seen = _run(graph, items, results)
    assert (summary.skipped, summary.ok, summary.errors, seen, graph.asked) == (3, 0, 0, [], [])
    assert summary.failed == summary.errors_before == 2, "errors recorded by an earlier run still count as failed"

    graph = _Graph()
    summary, seen = _run(graph, items, ResultsFile(path, BatchRecord), retry_errors=True)
    assert (summary.skipped, summary.ok, summary.errors, summary.failed) == (1, 1, 1, 1)
    assert graph.asked == ["failed"]
    assert [record.id for record in seen] == ["bad", "failed"]
    reopened = ResultsFile(path, BatchRecord)
    assert reopened.records["failed"].status == "ok" and reopened.records["failed"].label == "contentment"
    assert reopened.records["bad"].error == "bad input: line 3: not JSON"
    assert len(_lines(path)) == 5


def test_run_batch_keeps_the_trajectory_only_when_asked(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl", BatchRecord)

    _summary, [record] = _run(_Graph(), [_item(tmp_path, "calm")], results, with_trajectory=True)

    assert record.trajectory["id"] == record.run_id
    assert [call["purpose"] for call in record.trajectory["calls"]][:2] == ["perceive", "reason"]


def test_run_batch_on_a_folder_end_to_end(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for name in ("a.png", "sub/B.PNG"):
        _write_png(folder / name)
    results = ResultsFile(tmp_path / "results.jsonl", BatchRecord)

    first, _ = _run(_Graph(), list(read_batch_items(folder)), results)
    again, seen = _run(_Graph(), list(read_batch_items(folder)), ResultsFile(tmp_path / "results.jsonl", BatchRecord))

    assert (first.ok, first.errors) == (2, 0)
    assert (again.skipped, again.ok, seen) == (2, 0, [])
    assert set(results.records) == {"a.png", "sub/B.PNG"}


def test_a_write_error_stops_the_batch_cleanly_and_the_same_file_resumes(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    items = [_item(tmp_path, f"item-{i}") for i in range(8)]
    graph = _Graph()

    async def run_until_the_disk_is_full() -> tuple[ResultsWriteError, int, int]:
        with ResultsFile(path, BatchRecord) as results, simulated(SimulatedDisk(free=700, chunk=50)):
            with pytest.raises(ResultsWriteError) as raised:
                await run_batch(graph, items, results, max_concurrency=3)
            calls_at_error = graph.model_calls
            await asyncio.sleep(0.3)  # time in which runs left going would call the model again
            return raised.value, calls_at_error, graph.model_calls

    error, calls_at_error, calls_later = asyncio.run(run_until_the_disk_is_full())

    assert calls_later == calls_at_error, "no item runs after the write error"
    assert path.read_bytes().endswith(b"\n")
    kept = _lines(path)
    assert 1 <= error.kept == len(kept) < len(items)
    summary, _seen = _run(_Graph(), items, ResultsFile(path, BatchRecord))
    assert (summary.skipped, summary.ok) == (len(kept), len(items) - len(kept))
    assert sorted(record.id for record in _lines(path)) == sorted(item.id for item in items)
