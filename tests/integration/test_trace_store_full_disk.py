"""A trace store on a full disk, as `emo-r3 run` meets it: the answer still comes, the real cause is named, and no
`traces show` hint points at a run that was never written."""

from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path

from repo import EMO_R3
from scripted_trace_runs import scripted_graph

from emo_r3.graphs.traces.store import TraceStore

# SQLite's shared-memory index of a WAL store is 32 KiB: a limit of exactly that lets the store open, and the write
# of a run's pages into its write-ahead log then runs out of room.
SHM_BYTES = 32 * 1024


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_run_with_a_full_trace_store_answers_and_says_the_trace_was_not_kept(
    tmp_path: Path, tiny_config: Path, noise_image: Path
) -> None:
    store_path = tmp_path / "traces.sqlite"
    store = TraceStore(store_path)
    scripted_graph(store).run(str(noise_image))
    store.close()
    done = subprocess.run(
        [*EMO_R3, "run", str(noise_image), "--config", str(tiny_config), "--traces", str(store_path)],
        capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(SHM_BYTES),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "emotion" in done.stdout  # the answer the user waited for
    assert "Traceback" not in done.stderr
    assert "warning: the trace was not recorded" in done.stderr and "trace: emo-r3 traces show" not in done.stderr
    assert "rollback" not in done.stderr
    assert TraceStore(store_path, readonly=True).count_runs() == 1  # the earlier run is intact
