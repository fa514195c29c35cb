"""How `emo-r3` starts and prints: cheap commands import neither torch nor matplotlib, and output that does not go to
a terminal is never wrapped or styled, whatever the environment's width settings."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from repo import EMO_R3
from scripted_trace_runs import scripted_graph

from emo_r3.graphs.traces.store import TraceStore

MODEL_STACK = ("torch", "matplotlib", "transformers")
ANSI = re.compile(r"\x1b\[")


def plain_env(**extra: str) -> dict[str, str]:
    """CI's environment: no terminal size variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, **extra}


def imported_modules(*args: str, cwd: Path) -> set[str]:
    done = subprocess.run(
        [EMO_R3[0], "-X", "importtime", *EMO_R3[1:], *args],
        capture_output=True, text=True, env=plain_env(), cwd=cwd, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture
def store(tmp_path: Path, noise_image: Path) -> Path:
    path = tmp_path / "traces.sqlite"
    scripted_graph(TraceStore(path)).run(str(noise_image))
    return path


@pytest.mark.parametrize(
    ("args", "forbidden"),
    [
        pytest.param(args, forbidden, id=" ".join(args))
        for args, forbidden in [
            (["--help"], (*MODEL_STACK, "langgraph")),
            (["--version"], (*MODEL_STACK, "langgraph")),
            (["traces", "list"], (*MODEL_STACK, "langgraph")),
            (["eval", "--help"], MODEL_STACK),
            (["train", "--help"], MODEL_STACK),
            (["run", "--help"], MODEL_STACK),
        ]
    ],
)
def test_cheap_commands_load_no_model_stack(
    args: list[str], forbidden: tuple[str, ...], store: Path, tmp_path: Path
) -> None:
    if args[:2] == ["traces", "list"]:
        args = [*args, "--traces", str(store)]
    loaded = imported_modules(*args, cwd=tmp_path)
    assert "emo_r3.graphs.cli.main" in loaded  # the measurement saw our imports at all
    heavy = sorted(name for name in loaded if name.split(".")[0] in forbidden)
    assert not heavy, f"`emo-r3 {' '.join(args)}` imported {heavy[:5]}"


@pytest.mark.parametrize("columns", [None, "20"], ids=["no COLUMNS", "COLUMNS=20"])
def test_output_that_is_not_a_terminal_is_never_wrapped_or_styled(tmp_path: Path, columns: str | None) -> None:
    deep = tmp_path.joinpath(*(f"a-rather-long-folder-name-{i}" for i in range(6))) / "traces.sqlite"
    env = plain_env(**({"COLUMNS": columns} if columns else {}))
    done = subprocess.run(
        [*EMO_R3, "traces", "list", "--traces", str(deep)],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"error: no trace store at {deep};" in done.stderr.splitlines()[0], done.stderr
    assert not ANSI.search(done.stderr + done.stdout)


def test_a_table_of_long_rows_stays_one_line_per_run(store: Path) -> None:
    done = subprocess.run(
        [*EMO_R3, "traces", "list", "--traces", str(store)],
        capture_output=True, text=True, env=plain_env(COLUMNS="40"), stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "perceive → reason → reflect → finalize" in line]
    assert len(rows) == 1 and "noise.png" in rows[0]
    assert not ANSI.search(done.stdout)
