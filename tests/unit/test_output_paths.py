"""graphs/cli/output_paths.py: which output files and folders can be written, table-driven over what goes wrong."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from emo_r3.graphs.cli.output_paths import OutputPathError, check_output_file, check_output_folder

AS_ROOT = os.geteuid() == 0  # root may write anywhere: permission cases cannot fail for it


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file")
    return path


def _read_only(path: Path) -> Path:
    _file(path).chmod(0o444)
    return path


def _closed_folder(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o555)
    return path


# name: (what to make under tmp_path and return, the output path relative to tmp_path, what the error says)
BAD_FILES: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "a folder": (lambda tmp: (tmp / "out").mkdir(), "out", r"out is a folder; give a file name instead"),
    "a link to a folder": (lambda tmp: (tmp / "link").symlink_to(tmp), "link", r"link is a folder"),
    "under a file": (lambda tmp: _file(tmp / "f.txt"), "f.txt/results.jsonl", r"f\.txt is a file, not a folder"),
    "deep under a file": (lambda tmp: _file(tmp / "f.txt"), "f.txt/a/b/r.jsonl", r"r\.jsonl: .*f\.txt is a file"),
    "a fifo": (lambda tmp: os.mkfifo(tmp / "pipe"), "pipe", r"pipe exists and is not a regular file"),
    "a link loop": (lambda tmp: (tmp / "loop").symlink_to(tmp / "loop"), "loop", r"cannot be used \(Too many levels"),
    "a name too long": (lambda tmp: None, "x" * 300 + "/r.jsonl", r"cannot be used \(File name too long\)"),
    "read-only": (lambda tmp: _read_only(tmp / "r.jsonl"), "r.jsonl", r"r\.jsonl is read-only"),
    "in a closed folder": (
        lambda tmp: _closed_folder(tmp / "c"),
        "c/new/r.jsonl",
        r"no permission to write in \S*/c; give",
    ),
}
BAD_FOLDERS: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "a file": (lambda tmp: _file(tmp / "eval"), "eval", r"eval is a file, not a folder; give a folder"),
    "under a file": (lambda tmp: _file(tmp / "f.txt"), "f.txt/eval", r"f\.txt is a file, not a folder"),
    "a link loop": (lambda tmp: (tmp / "loop").symlink_to(tmp / "loop"), "loop/eval", r"Too many levels"),
    "in a closed folder": (lambda tmp: _closed_folder(tmp / "c"), "c/eval", r"no permission to write in \S*/c; give"),
}
NEEDS_PERMISSIONS = {"read-only", "in a closed folder"}


def _case(name: str, cases: dict) -> tuple:
    marks = pytest.mark.skipif(AS_ROOT and name in NEEDS_PERMISSIONS, reason="root bypasses file permissions")
    return pytest.param(*cases[name], id=name, marks=marks)


@pytest.mark.parametrize(("make", "relative", "says"), [_case(name, BAD_FILES) for name in BAD_FILES])
def test_an_output_file_that_cannot_be_written_is_refused_clearly(tmp_path: Path, make, relative: str, says: str):
    make(tmp_path)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(OutputPathError, match=says) as raised:
        check_output_file(tmp_path / relative)

    assert "give" in str(raised.value) or "make it writable" in str(raised.value), "the error says what to do"
    assert sorted(tmp_path.rglob("*")) == before, "a check creates nothing"


@pytest.mark.parametrize(("make", "relative", "says"), [_case(name, BAD_FOLDERS) for name in BAD_FOLDERS])
def test_an_output_folder_that_cannot_be_written_is_refused_clearly(tmp_path: Path, make, relative: str, says: str):
    make(tmp_path)

    with pytest.raises(OutputPathError, match=says) as raised:
        check_output_folder(tmp_path / relative)

    assert "give" in str(raised.value)


@pytest.mark.parametrize(
    "relative", ["results.jsonl", "new/nested/results.jsonl", "existing.jsonl", "dangling-link"], ids=str
)
def test_files_that_exist_or_can_be_created_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str):
    _file(tmp_path / "existing.jsonl")
    (tmp_path / "dangling-link").symlink_to(tmp_path / "created-on-write.jsonl")
    monkeypatch.chdir(tmp_path)

    check_output_file(Path(relative))
    check_output_file(tmp_path / relative)

    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("relative", [".", "eval", "new/nested/eval"], ids=str)
def test_folders_that_exist_or_can_be_created_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str):
    (tmp_path / "eval").mkdir()
    monkeypatch.chdir(tmp_path)

    check_output_folder(Path(relative))
    check_output_folder(tmp_path / relative)
