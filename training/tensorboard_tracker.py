"""TensorBoard scalars in `run_dir/tensorboard` (`report_to: [tensorboard]`, the default; it comes with `local`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class TensorBoardTracker:
    def __init__(self, folder: Path, *, purge_step: int) -> None:
        # purge_step drops events a killed run logged after its last checkpoint; they are about to be redone.
        self._writer = SummaryWriter(str(folder), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
