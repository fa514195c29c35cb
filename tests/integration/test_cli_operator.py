"""What an operator meets at the command line: live progress only on a terminal, no libraries' chatter unless
`--verbose`, inputs checked before models load, documented exit codes, and `--json` that parses. Real processes, the
tiny model; a pseudo-terminal stands in for a person's terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import time
from pathlib import Path

from PIL import Image
from repo import EMO_R3

THIRD_PARTY_CHATTER = ("[transformers]", "pad_token_id", "Loading weights", "it/s]", "Warning")


def emo_r3(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMO_R3, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def on_a_terminal(*args: str, timeout: float = 300) -> tuple[int, list[tuple[float, str]]]:
    """Run with stdout and stderr on a pseudo-terminal (120 columns); the exit code and what the terminal received,
    chunk by chunk, with seconds since the start."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERM")} | {"TERM": "xterm-256color"}
    started = time.monotonic()
    process = subprocess.Popen([*EMO_R3, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append((time.monotonic() - started, chunk.decode(errors="replace")))
    os.close(leader)
    return process.wait(timeout=timeout), chunks


def test_a_terminal_shows_the_node_and_round_being_run(tiny_config, noise_image):
    code, chunks = on_a_terminal("run", str(noise_image), "--config", str(tiny_config), "--max-rounds", "1",
                                 "--no-traces")  # fmt: skip
    shown = "".join(text for _, text in chunks)
    assert code == 0, shown
    for step in ("loading models", "perceive (round 0)", "reason (round 0)", "reflect (round 0)"):
        assert step in shown, step
    assert "emotion" in shown and "path" in shown  # the answer itself
    assert not any(noise in shown for noise in THIRD_PARTY_CHATTER), shown
    first_node = next(at for at, text in chunks if "perceive (round 0)" in text)
    first_line = chunks[0][0]
    print(f"first progress line after {first_line:.2f} s; first node shown after {first_node:.2f} s")


def test_piped_output_has_no_progress_and_no_library_chatter_unless_verbose(tiny_config, noise_image, tmp_path):
    traces = tmp_path / "traces.sqlite"
    done = emo_r3("run", str(noise_image), "--config", str(tiny_config), "--max-rounds", "0", "--traces", str(traces))
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()  # no spinner, bar or warning when stderr is not a terminal: the trace only
    assert line.startswith("trace: emo-r3 traces show ") and line.endswith(f"--traces {traces}")
    assert "\x1b" not in done.stdout and "\r" not in done.stdout

    verbose = emo_r3("run", str(noise_image), "--config", str(tiny_config), "--max-rounds", "0", "--no-traces",
                     "--verbose")  # fmt: skip
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading weights" in verbose.stderr  # the libraries' own output is back
    assert "perceive (round" not in verbose.stderr  # but progress still only on a terminal

    listed = emo_r3("traces", "list", "--traces", str(traces), "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["total"] == 1 and page["offset"] == 0 and len(page["runs"]) == 1
    run_id = page["runs"][0]["id"]
    assert run_id[:12] in line

    shown = emo_r3("traces", "show", run_id[:10], "--traces", str(traces), "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["result"]["trajectory"]["id"] == run_id
    assert detail["result"]["trajectory"]["calls"][0]["purpose"] == "perceive"


def test_run_checks_its_input_before_loading_any_model(tiny_config, tmp_path):
    started = time.monotonic()
    done = emo_r3("run", str(tmp_path / "missing.jpg"), "--config", str(tiny_config))
    assert done.returncode == 2 and f"{tmp_path / 'missing.jpg'}: no such file" in done.stderr
    assert "loading models" not in done.stderr and not (Path.cwd() / "runs" / "missing").exists()
    print(f"refused after {time.monotonic() - started:.2f} s")


def broken_images(folder: Path, count: int) -> None:
    folder.mkdir()
    for index in range(count):
        (folder / f"broken_{index}.jpg").write_bytes(b"\xff\xd8\xff not a picture")


def test_batch_where_every_item_failed_exits_1_with_a_summary(tiny_config, tmp_path):
    broken_images(tmp_path / "images", 3)
    out = tmp_path / "results.jsonl"
    done = emo_r3("batch", str(tmp_path / "images"), "--out", str(out), "--config", str(tiny_config), "--no-traces",
                  "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["ok"], summary["errors"], summary["failed"], summary["results"]) == (0, 3, 3, str(out))
    assert "0 ok, 3 errors" in done.stderr  # (failures of an earlier run count too: tests/unit/test_batch.py)


def test_eval_json_and_exit_1_when_an_item_failed(tiny_config, tmp_path):
    root = tmp_path / "fi"
    for label, size in (("awe", (40, 32)), ("fear", (60, 40))):
        (root / label).mkdir(parents=True)
        Image.new("RGB", size, (90, 60, 120)).save(root / label / f"{label}.png")
    (root / "fear" / "torn.jpg").write_bytes(b"\xff\xd8\xff torn")  # the dataset's own problem: skipped
    config = tmp_path / "small-images.yaml"  # the graph refuses the 60x40 picture: that item fails
    config.write_text(tiny_config.read_text() + "image: {max_decode_pixels: 1500}\n")
    out = tmp_path / "eval"
    done = emo_r3("eval", "--dataset", f"fi:{root}", "--config", str(config), "--out", str(out), "--no-traces",
                  "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr  # after scoring the rest
    summary = json.loads(done.stdout)
    assert (summary["folder"], summary["failed"], summary["skipped"]) == (str(out), 1, 1)
    assert summary["metrics"] == json.loads((out / "metrics.json").read_text()) and summary["metrics"]["n"] == 2
    assert "skipped: fear/torn.jpg" in done.stderr and "1 of 2 items failed" in done.stderr
