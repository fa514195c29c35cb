"""`emo-r3 traces` never destroys what it did not write, checks its output before any work, and answers a damaged
store or an absurd option with a message and exit code 2, not a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from repo import EMO_R3
from scripted_trace_runs import scripted_graph

from emo_r3.graphs.traces.store import TraceStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, bundled_images: dict[str, Path]) -> Path:
    path = tmp_path_factory.mktemp("store") / "traces.sqlite"
    with TraceStore(path) as opened:
        scripted_graph(opened).run(str(bundled_images["coffee"]))
    return path


def traces(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*EMO_R3, "traces", *args], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_export_into_the_store_itself_is_refused_and_the_store_kept(store: Path) -> None:
    before = store.read_bytes()
    done = traces("export", "--traces", str(store), "--out", str(store))
    assert done.returncode == 2 and "is the trace store" in done.stderr
    assert store.read_bytes() == before
    assert TraceStore(store, readonly=True).count_runs() == 1


def test_export_replaces_an_existing_file_only_when_asked(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "mine.jsonl"
    target.write_text("my notes\n")
    done = traces("export", "--traces", str(store), "--out", str(target))
    assert done.returncode == 2 and "--force" in done.stderr and target.read_text() == "my notes\n"
    assert traces("export", "--traces", str(store), "--out", str(target), "--force").returncode == 0
    assert len(target.read_text().splitlines()) == 1 and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("out", "says"),
    [("a-folder", "is a folder"), ("a-file/x.jsonl", "is a file, not a folder")],
    ids=["folder", "under-a-file"],
)
def test_export_to_an_unusable_path_fails_before_any_work(store: Path, tmp_path: Path, out: str, says: str) -> None:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    done = traces("export", "--traces", str(store), "--out", str(tmp_path / out))
    assert done.returncode == 2 and says in done.stderr


def test_export_creates_missing_folders(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dir" / "runs.jsonl"
    assert traces("export", "--traces", str(store), "--out", str(target)).returncode == 0
    assert target.is_file()


@pytest.mark.parametrize("args", [["--limit", "99999999999999999999"], ["--offset", "-1"], ["--limit", "0"]])
def test_absurd_list_options_are_usage_errors(store: Path, args: list[str]) -> None:
    done = traces("list", "--traces", str(store), *args)
    assert done.returncode == 2 and "Invalid value" in done.stderr


@pytest.mark.parametrize("command", [["list"], ["show", "abc"], ["export"], ["diff", "a", "b"]])
def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    foreign = tmp_path / "notes.sqlite"
    foreign.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    done = traces(*command, "--traces", str(foreign))
    assert done.returncode == 2 and str(foreign) in done.stderr
