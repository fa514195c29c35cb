"""The experiment trackers a training run reports to (`report_to`): TensorBoard, Weights & Biases, MLflow. Each
backend is a module of its own, imported only when the config names it, and gets each step's metrics under the same
names. W&B and MLflow runs outlive the process: a killed run started again continues the same run (`TrackerRuns`) and
does not send a step twice."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Protocol

from emo_r3.agents.model_specs import ConfigError
from emo_r3.training.tracker_runs import TrackerRuns

if TYPE_CHECKING:
    from emo_r3.training.config import TrackerName, TrainConfig

logger = logging.getLogger(__name__)

TRACKING_EXTRA = "pip install 'emo-r3[tracking]'"
# The W&B project and MLflow experiment when neither the config nor the environment names one.
DEFAULT_PROJECT = "emo-r3"


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def missing_extra(name: TrackerName, error: ImportError) -> ConfigError:
    return ConfigError(f"report_to lists {name}, which is not installed ({error}): {TRACKING_EXTRA}")


def open_trackers(config: TrainConfig, start_step: int) -> list[Tracker]:
    """The trackers of `report_to`, ready for step `start_step`; if one cannot open, those opened before are closed."""
    runs = TrackerRuns(config.run_dir / "trackers.json")
    trackers = []
    with ExitStack() as opened:
        for name in config.report_to:
            tracker = _open(name, config, runs, start_step)
            opened.callback(tracker.close)
            trackers.append(tracker)
        opened.pop_all()
    return trackers


def close_trackers(trackers: Sequence[Tracker]) -> None:
    """Close every tracker, even when one fails (its error is raised after the others are closed)."""
    with ExitStack() as closing:
        for tracker in trackers:
            closing.callback(tracker.close)


def _open(name: TrackerName, config: TrainConfig, runs: TrackerRuns, start_step: int) -> Tracker:
    """TensorBoard drops what a killed run logged from `start_step` on (it is about to be redone); W&B and MLflow
    continue the run folder's run and skip the steps it already has."""
    if name == "tensorboard":
        from emo_r3.training.tensorboard_tracker import TensorBoardTracker

        return TensorBoardTracker(config.run_dir / "tensorboard", purge_step=start_step)
    if name == "wandb":
        from emo_r3.training.wandb_tracker import WandbTracker

        return ContinuedRun(name, WandbTracker(config, runs), runs, start_step)
    from emo_r3.training.mlflow_tracker import MlflowTracker

    return ContinuedRun(name, MlflowTracker(config, runs), runs, start_step)


class ContinuedRun:
    """A W&B or MLflow run that may have received steps before a kill. Those steps are redone after the resume; the
    backend keeps every point it is sent, so each step goes out once, and the run file remembers the last one."""

    def __init__(self, name: TrackerName, tracker: Tracker, runs: TrackerRuns, start_step: int) -> None:
        self.name, self.tracker, self.runs = name, tracker, runs
        through = runs.logged_through(name)
        if through >= start_step:
            logger.warning(
                "steps %d-%d are redone from the checkpoint; the %s run keeps the values it already has for them "
                "(delete %s to report to a new run instead)", start_step, through, name, runs.path,
            )  # fmt: skip

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if step <= self.runs.logged_through(self.name):
            return
        self.tracker.log(step, metrics)
        self.runs.set_logged_through(self.name, step)

    def close(self) -> None:
        self.tracker.close()
