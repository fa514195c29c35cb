"""The loop both trainers run: steps until `config.steps`, a callback after each, the run log closed at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from emo_r3.training.config import TrainConfig
from emo_r3.training.run_log import RunLog

OnStep = Callable[[int, dict[str, float]], None]


class SteppedTrainer(Protocol):
    config: TrainConfig
    step: int  # steps done
    log: RunLog

    def train_step(self) -> dict[str, float]: ...


def run_steps(trainer: SteppedTrainer, on_step: OnStep | None = None) -> list[dict[str, float]]:
    """Run the remaining steps; returns each step's metrics. `on_step(step, metrics)` after each one."""
    history = []
    try:
        while trainer.step < trainer.config.steps:
            metrics = trainer.train_step()
            history.append(metrics)
            if on_step is not None:
                on_step(trainer.step, metrics)
    finally:
        trainer.log.close()
    return history
