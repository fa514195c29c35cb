"""graphs/results_file.py: append and reopen, repair of a torn last line, blank lines, refusal of foreign lines,
`done`, the writer's lock, and writes that fail part-way (short writes, a full disk) on a simulated disk."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simulated_disk import SimulatedDisk, simulated

from emo_r3.graphs.results_file import (
    ResultRecord,
    ResultsFile,
    ResultsFileError,
    ResultsFileInUseError,
    ResultsWriteError,
)


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


def test_a_torn_last_line_is_ignored_on_read_cut_under_the_lock_and_its_item_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    complete = _line(Scored(id="a", status="ok")) + _line(Scored(id="b", status="ok"))
    torn = _line(Scored(id="c", status="ok", score=1.0))[:-1]
    path.write_bytes(complete + torn[: len(torn) // 2])

    results = ResultsFile(path, Scored)
    assert set(results.records) == {"a", "b"} and not results.done("c")
    assert path.read_bytes() == complete + torn[: len(torn) // 2], "a reader never writes"

    with results:
        assert path.read_bytes() == complete
        results.append(Scored(id="c", status="ok", score=1.0))
    assert ResultsFile(path, Scored).records["c"].score == 1.0
    assert path.read_bytes() == complete + torn + b"\n"


@pytest.mark.parametrize("locked", [True, False], ids=["held-lock", "lone-append"])
def test_a_torn_tail_is_cut_before_appending_so_no_record_lands_on_it(tmp_path: Path, locked: bool) -> None:
    path = tmp_path / "results.jsonl"
    complete = _line(Scored(id="a", status="ok"))
    results = ResultsFile(path, Scored)
    if locked:
        results.lock()
    results.append(Scored(id="a", status="ok"))
    with path.open("ab") as handle:  # what a write that failed part-way, and could not be undone, leaves
        handle.write(_line(Scored(id="b", status="ok"))[:-7])

    results.append(Scored(id="c", status="ok"))
    results.close()

    assert path.read_bytes() == complete + _line(Scored(id="c", status="ok"))


def test_a_whole_record_without_its_newline_counts_as_torn(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    complete = _line(Scored(id="a", status="ok"))
    path.write_bytes(complete + _line(Scored(id="b", status="ok"))[:-1])

    with ResultsFile(path, Scored) as results:
        assert not results.done("b")
    assert path.read_bytes() == complete


@pytest.mark.parametrize("blank", [b"\n", b"   \n", b"\r\n", b"\t \n\n"], ids=["empty", "spaces", "crlf", "several"])
def test_blank_lines_are_skipped_never_poison_the_file(tmp_path: Path, blank: bytes) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(blank + _line(Scored(id="a", status="ok")) + blank + _line(Scored(id="b", status="ok")))

    with ResultsFile(path, Scored) as results:
        results.append(Scored(id="c", status="ok"))

    assert set(ResultsFile(path, Scored).records) == {"a", "b", "c"}


@pytest.mark.parametrize(
    "bad_line",
    [b"not json at all\n", b'{"id": "x"}\n', b'{"status": "ok"}\n', b"[1, 2]\n", b'{"id": "a", "sta\r\n'],
    ids=["not-json", "no-status", "no-id", "not-an-object", "carriage-return"],
)
def test_a_complete_line_that_is_not_a_record_raises_and_leaves_the_file_alone(tmp_path: Path, bad_line: bytes) -> None:
    path = tmp_path / "results.jsonl"
    original = _line(Scored(id="a", status="ok")) + bad_line + _line(Scored(id="b", status="ok"))[:10]
    path.write_bytes(original)

    with pytest.raises(ResultsFileError, match=r"results\.jsonl:2 is not a Scored .*right file"):
        ResultsFile(path, Scored)
    assert path.read_bytes() == original


def test_a_file_that_turns_foreign_before_the_lock_is_refused_by_the_lock_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, Scored)
    foreign = _line(Scored(id="a", status="ok")) + b"[1, 2]\n" + b'{"id": "torn'
    path.write_bytes(foreign)

    with pytest.raises(ResultsFileError, match=r"results\.jsonl:2 is not a Scored"):
        results.lock()

    assert path.read_bytes() == foreign
    with path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the failed lock() let go of the file


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


@pytest.mark.parametrize("score", [float("inf"), float("-inf"), float("nan")])
def test_a_record_that_would_not_read_back_is_refused_before_it_can_poison_the_file(tmp_path: Path, score) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path, Scored)
    results.append(Scored(id="a", status="ok"))

    with pytest.raises(ValueError, match=r"record 'b' would not read back from .*results\.jsonl .*not written"):
        results.append(Scored(id="b", status="ok", score=score))

    assert path.read_bytes() == _line(Scored(id="a", status="ok")) and not results.done("b")
    assert set(ResultsFile(path, Scored).records) == {"a"}


# The writer's lock: flock conflicts between open file descriptions, so two ResultsFiles in one process stand in
# for two processes (tests/integration/test_cli.py runs two real ones).


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    first, second = ResultsFile(path, Scored), ResultsFile(path, Scored)

    with first:
        assert path.exists(), "taking the lock creates the file"
        with pytest.raises(ResultsFileInUseError, match=r"results\.jsonl is being written by another running"):
            second.lock()
        with pytest.raises(ResultsFileInUseError):
            second.append(Scored(id="b", status="ok"))  # a lone append takes the lock too
        first.append(Scored(id="a", status="ok"))

    with second:  # released on exit
        assert set(second.records) == {"a"}, "the lock re-reads what the first writer wrote"
        second.append(Scored(id="b", status="ok"))
    assert set(ResultsFile(path, Scored).records) == {"a", "b"}


def test_a_file_system_without_locks_is_a_clear_error_not_a_claim_of_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:  # simulates a network file system that has no locks
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ResultsFileError, match=r"cannot lock .*results\.jsonl \(No locks available\); write") as raised:
        ResultsFile(tmp_path / "results.jsonl", Scored).lock()
    assert not isinstance(raised.value, ResultsFileInUseError)


def test_the_lock_is_released_when_the_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with pytest.raises(RuntimeError), ResultsFile(path, Scored):
        raise RuntimeError("the run fell over")
    ResultsFile(path, Scored).lock().close()


def test_a_results_path_that_cannot_be_opened_is_a_results_file_error(tmp_path: Path) -> None:
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "file").write_text("a file, not a folder")

    for path in (tmp_path / "folder.jsonl", tmp_path / "file" / "results.jsonl"):
        with pytest.raises(ResultsFileError, match=r"cannot (read|write) .*\.jsonl: "):
            ResultsFile(path, Scored).lock()


# Writes that fail part-way, on a simulated disk (tests/support/simulated_disk.py).


def _complete_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "only complete lines are left"
    return data.splitlines()


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_short_writes_are_continued_until_the_whole_record_is_written(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "results.jsonl"
    records = [Scored(id=f"item-{i}", status="ok", score=i / 3) for i in range(5)]

    with simulated(SimulatedDisk(free=1 << 20, chunk=chunk)), ResultsFile(path, Scored) as results:
        for record in records:
            results.append(record)

    assert path.read_bytes() == b"".join(_line(record) for record in records)


@settings(max_examples=60, deadline=None)
@given(
    free=st.integers(0, 400),
    chunk=st.integers(1, 64),
    scores=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=8),
    locked=st.booleans(),
)
def test_a_full_disk_keeps_exactly_the_complete_records_and_the_file_resumes(
    free: int, chunk: int, scores: list[float], locked: bool
) -> None:
    records = [Scored(id=f"item-{i}", status="ok", score=score) for i, score in enumerate(scores)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.jsonl"
        results = ResultsFile(path, Scored)
        if locked:
            results.lock()
        written = _append_until_full(results, records, SimulatedDisk(free=free, chunk=chunk))

        assert _complete_lines(path) == [_line(record).rstrip(b"\n") for record in records[:written]]
        assert list(results.records) == list(ResultsFile(path, Scored).records) == [r.id for r in records[:written]]

        for record in records[written:]:  # space is back: the same file takes the rest
            results.append(record)
        results.close()
        assert ResultsFile(path, Scored).records == {record.id: record for record in records}
        assert _complete_lines(path) == [_line(record).rstrip(b"\n") for record in records]


def _append_until_full(results: ResultsFile[Scored], records: list[Scored], disk: SimulatedDisk) -> int:
    """Append until the disk is full; returns how many records were appended."""
    with simulated(disk):
        for count, record in enumerate(records):
            try:
                results.append(record)
            except ResultsWriteError as error:
                assert error.kept == count and f"{count} results kept" in str(error)
                assert not results.done(record.id)
                return count
    return len(records)


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (errno.ENOSPC, "free space"),
        (errno.EFBIG, "raise the file-size limit (ulimit -f) or free space"),
        (errno.EDQUOT, "free space (the disk quota is used up)"),
        (errno.EIO, "fix the cause"),
    ],
    ids=["ENOSPC", "EFBIG", "EDQUOT", "EIO"],
)
def test_the_write_error_says_what_happened_what_is_kept_and_what_to_do(tmp_path: Path, error: int, hint: str) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, Scored) as results:
        results.append(Scored(id="a", status="ok"))
        with simulated(SimulatedDisk(free=10, error=error)), pytest.raises(ResultsWriteError) as raised:
            results.append(Scored(id="b", status="ok"))

    expected = f"could not write {path}: {os.strerror(error)}; 1 results kept; {hint} and run the same command again"
    assert str(raised.value) == expected + " to resume"
    assert raised.value.errno == error and raised.value.kept == 1
    assert path.read_bytes() == _line(Scored(id="a", status="ok"))


def test_a_failed_fsync_is_a_write_error_and_the_record_is_cut_back(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    real_fsync, calls = os.fsync, []

    def fsync_fails_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    with ResultsFile(path, Scored) as results:
        with pytest.MonkeyPatch.context() as patch, pytest.raises(ResultsWriteError, match="Input/output error"):
            patch.setattr(os, "fsync", fsync_fails_once)
            results.append(Scored(id="a", status="ok"))
        assert path.read_bytes() == b"" and not results.done("a")
        results.append(Scored(id="a", status="ok"))
    assert path.read_bytes() == _line(Scored(id="a", status="ok"))


def test_a_torn_record_that_cannot_be_cut_back_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"

    def ftruncate_fails(fd: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with ResultsFile(path, Scored) as results:
        results.append(Scored(id="a", status="ok"))
        with simulated(SimulatedDisk(free=9)), pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "ftruncate", ftruncate_fails)
            with pytest.raises(ResultsWriteError):
                results.append(Scored(id="b", status="ok"))
        assert path.read_bytes() == _line(Scored(id="a", status="ok")) + _line(Scored(id="b", status="ok"))[:9]
        assert set(ResultsFile(path, Scored).records) == {"a"}, "a reader ignores the torn tail"

        results.append(Scored(id="c", status="ok"))

    assert _complete_lines(path) == [_line(Scored(id=i, status="ok")).rstrip(b"\n") for i in ("a", "c")]
