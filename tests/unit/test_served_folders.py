"""Served-weight folders: each push keeps its folder and the one before it; a resumed run's first push keeps the
folders its killed driver left, one of which a server may still be reading."""

from __future__ import annotations

from pathlib import Path

from emo_r3.training.served_folders import ServedFolders


def push(folders: ServedFolders, step: int) -> Path:
    with folders.push(step) as folder:
        assert not folder.exists()
        (folder / "policy").mkdir(parents=True)  # the weights, as a trainer saves them
    return folder


def left(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_a_run_keeps_the_folder_it_pushed_and_the_one_before(tmp_path: Path) -> None:
    folders = ServedFolders(tmp_path)
    for step in range(4):
        push(folders, step)
    assert left(tmp_path) == ["step-00000002", "step-00000003"]


def test_a_resumed_run_keeps_the_folder_it_pushes_and_those_the_killed_run_left(tmp_path: Path) -> None:
    killed = ServedFolders(tmp_path)
    for step in range(6):  # pushed the weights of steps 4 and 5, then died; its last checkpoint is step 3
        push(killed, step)
    resumed = ServedFolders(tmp_path)
    push(resumed, 3)
    assert left(tmp_path) == ["step-00000003", "step-00000004", "step-00000005"]
    push(resumed, 4)  # the killed run's step-4 folder is there: the new weights go beside it, then it goes
    assert left(tmp_path) == ["step-00000003", "step-00000004-again-1"]


def test_a_step_pushed_again_gets_a_new_folder_beside_the_one_a_server_may_read(tmp_path: Path) -> None:
    """A run killed right after pushing step 3, resumed from step 3's checkpoint, pushes step 3 again: the killed
    run's folder stays (its servers read it until they are given the new one) and goes with the next push."""
    push(ServedFolders(tmp_path), 3)
    resumed = ServedFolders(tmp_path)
    again = push(resumed, 3)
    assert again.name == "step-00000003-again-1" and (tmp_path / "step-00000003" / "policy").is_dir()
    assert left(again) == ["policy"]
    push(resumed, 4)
    assert left(tmp_path) == ["step-00000003-again-1", "step-00000004"]
