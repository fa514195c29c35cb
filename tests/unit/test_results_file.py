"""graphs/results_file.py: append and reopen, repair of a torn last line, refusal of foreign lines, `done`."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo_r3.graphs.results_file import ResultRecord, ResultsFile, ResultsFileError


class Scored(ResultRecord):
    score: float = 0.0


def _line(record: Scored) -> bytes:
    return (record.model_dump_json() + "\n").encode()


def test_appended_records_read_back_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "results.jsonl"
    results = ResultsFile(path, Scored)
    first, second = Scored(id="a", status="ok", score=0.5), Scored(id="b/c.png", status="error", score=-1.0)
    results.append(first)
    results.append(second)

    reopened = ResultsFile(path, Scored)

    assert reopened.records == {"a": first, "b/c.png": second}
    assert path.read_bytes() == _line(first) + _line(second)


def test_a_missing_file_is_empty_and_not_created_until_the_first_append(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, Scored)
    assert results.records == {} and not results.done("a")
    assert not path.exists()


def test_a_torn_last_line_is_cut_off_and_its_item_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    complete = _line(Scored(id="a", status="ok")) + _line(Scored(id="b", status="ok"))
    torn = _line(Scored(id="c", status="ok", score=1.0))[:-1]
    path.write_bytes(complete + torn[: len(torn) // 2])

    results = ResultsFile(path, Scored)

    assert set(results.records) == {"a", "b"}
    assert not results.done("c")
    assert path.read_bytes() == complete
    results.append(Scored(id="c", status="ok", score=1.0))
    assert ResultsFile(path, Scored).records["c"].score == 1.0
    assert path.read_bytes() == complete + torn + b"\n"


def test_a_whole_record_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    complete = _line(Scored(id="a", status="ok"))
    path.write_bytes(complete + _line(Scored(id="b", status="ok"))[:-1])

    results = ResultsFile(path, Scored)

    assert not results.done("b")
    assert path.read_bytes() == complete


@pytest.mark.parametrize(
    "bad_line",
    [b"not json at all\n", b'{"id": "x"}\n', b'{"status": "ok"}\n', b"[1, 2]\n", b"\n"],
    ids=["not-json", "no-status", "no-id", "not-an-object", "blank"],
)
def test_a_complete_line_that_is_not_a_record_raises_and_leaves_the_file_alone(tmp_path: Path, bad_line: bytes) -> None:
    path = tmp_path / "results.jsonl"
    original = _line(Scored(id="a", status="ok")) + bad_line + _line(Scored(id="b", status="ok"))[:10]
    path.write_bytes(original)

    with pytest.raises(ResultsFileError, match=r"results\.jsonl:2 is not a Scored .*right file"):
        ResultsFile(path, Scored)

    assert path.read_bytes() == original


def test_a_line_of_another_record_type_is_refused(tmp_path: Path) -> None:
    class Strict(ResultRecord):
        label: str

    path = tmp_path / "results.jsonl"
    original = _line(Scored(id="a", status="ok"))
    path.write_bytes(original)

    with pytest.raises(ResultsFileError, match=r":1 is not a Strict"):
        ResultsFile(path, Strict)
    assert path.read_bytes() == original


def test_done_with_and_without_retrying_errors(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl", Scored)
    results.append(Scored(id="ok", status="ok"))
    results.append(Scored(id="failed", status="error"))

    assert results.done("ok") and results.done("ok", retry_errors=True)
    assert results.done("failed") and not results.done("failed", retry_errors=True)
    assert not results.done("unknown") and not results.done("unknown", retry_errors=True)


@pytest.mark.parametrize(("first", "last"), [("error", "ok"), ("ok", "error")])
def test_the_last_record_of_an_id_wins(tmp_path: Path, first: str, last: str) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, Scored)
    results.append(Scored(id="a", status=first, score=1.0))
    results.append(Scored(id="b", status="ok"))
    results.append(Scored(id="a", status=last, score=2.0))

    for reader in (results, ResultsFile(path, Scored)):
        assert reader.records["a"] == Scored(id="a", status=last, score=2.0)
        assert reader.done("a", retry_errors=True) == (last == "ok")
    assert len(path.read_bytes().splitlines()) == 3
