"""MLflow (`report_to: [mlflow]`): one MLflow run per run folder, continued after a resume, with the training config
as its parameters. The store is `mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else MLflow's default; the
experiment `mlflow.experiment`, else $MLFLOW_EXPERIMENT_NAME, else `emo-r3`; the run is named after the training run.
A resumed run stays in the store it started in (`run_dir/trackers.json`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from emo_r3.agents.model_specs import ConfigError
from emo_r3.training.config import TrainConfig
from emo_r3.training.tracker_runs import TrackerRuns
from emo_r3.training.trackers import DEFAULT_PROJECT, missing_extra

try:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
except ImportError as error:
    raise missing_extra("mlflow", error) from error

PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch


class MlflowRun(BaseModel):
    """Where the run folder's MLflow run lives."""

    run_id: str
    tracking_uri: str


class MlflowTracker:
    def __init__(self, config: TrainConfig, runs: TrackerRuns) -> None:
        saved = runs.saved("mlflow", MlflowRun)
        uri = saved.tracking_uri if saved else config.mlflow.tracking_uri or mlflow.get_tracking_uri()
        self._client = _client(uri)
        if saved is not None:
            self._run_id = _reopen(self._client, saved, runs)
            return
        experiment = config.mlflow.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        self._run_id = self._client.create_run(experiment_id, run_name=config.name).info.run_id
        runs.remember("mlflow", MlflowRun(run_id=self._run_id, tracking_uri=uri))
        params = [Param(key, value) for key, value in _flat(config.model_dump(mode="json"))]
        for start in range(0, len(params), PARAMS_PER_BATCH):  # the hyperparameters, once per run
            self._client.log_batch(self._run_id, params=params[start : start + PARAMS_PER_BATCH])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        batch = [Metric(name, float(value), now_ms, step) for name, value in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch)

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def _client(uri: str) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=uri)
    except (MlflowException, ImportError) as error:  # an opted-out file store; sqlite without SQLAlchemy
        raise ConfigError(
            f"MLflow cannot open the tracking store {uri!r}: {error}\nSet mlflow.tracking_uri in the training config "
            "(or MLFLOW_TRACKING_URI) to your MLflow server, e.g. http://127.0.0.1:5000"
        ) from error


def _reopen(client: MlflowClient, saved: MlflowRun, runs: TrackerRuns) -> str:
    try:
        client.get_run(saved.run_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise ConfigError(
            f"{runs.path} says this run reports to MLflow run {saved.run_id} at {saved.tracking_uri}, which that "
            "store does not have; delete the mlflow entry of that file to start a new MLflow run"
        ) from error
    client.update_run(saved.run_id, status="RUNNING")
    return saved.run_id


def _flat(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Nested sections as dotted parameter names (`algorithm.group_size`); lists and nulls as JSON."""
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value if isinstance(value, str) else json.dumps(value)
