"""Weights & Biases (`report_to: [wandb]`): one W&B run per run folder, continued after a resume. The project comes
from `wandb.project`, else $WANDB_PROJECT, else `emo-r3`; the run is named after the training run. WANDB_MODE,
WANDB_API_KEY and the other W&B variables work as usual; local files go to $WANDB_DIR, else the run folder. A resumed
run stays in the project it started in (`run_dir/trackers.json`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

from pydantic import BaseModel

from emo_r3.training.config import TrainConfig
from emo_r3.training.tracker_runs import TrackerRuns
from emo_r3.training.trackers import DEFAULT_PROJECT, missing_extra

try:
    import wandb
except ImportError as error:
    raise missing_extra("wandb", error) from error


class WandbRun(BaseModel):
    """Where the run folder's W&B run lives."""

    run_id: str
    project: str
    entity: str | None = None


class WandbTracker:
    def __init__(self, config: TrainConfig, runs: TrackerRuns) -> None:
        saved = runs.saved("wandb", WandbRun)
        run = saved or WandbRun(
            run_id=secrets.token_hex(8),  # W&B ids: letters, digits, - and _
            project=config.wandb.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=config.wandb.entity or os.environ.get("WANDB_ENTITY"),
        )
        # The id is kept before the run starts, so a kill at any point later continues this run.
        runs.remember("wandb", run)
        self._run = wandb.init(
            id=run.run_id,
            resume="allow",
            project=run.project,
            entity=run.entity,
            name=config.name,
            config=None if saved else config.model_dump(mode="json"),  # the hyperparameters, once per run
            dir=None if "WANDB_DIR" in os.environ else config.run_dir,
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        self._run.finish()
