"""`report_to: [tensorboard, wandb, mlflow]` on a real tiny training run: W&B in offline mode (its run files read back)
and MLflow on a local file store (read back with MlflowClient) get each step's metrics under the TensorBoard names and
the config once; a run that dies after a checkpoint continues the same W&B and MLflow runs without sending a step
twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_configs import tiny_train_config
from wandb_records import offline_run

from emo_r3.agents.model_specs import ConfigError
from emo_r3.training.config import TrainConfig
from emo_r3.training.local_trainer import LocalTrainer
from emo_r3.training.trackers import open_trackers


class Killed(Exception):
    """Stands for the process dying between two checkpoints."""


@pytest.fixture
def tracking_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "emo-r3-tests")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # mlflow-skinny has no SQLAlchemy for a sqlite store; the file store needs this opt-in since MLflow 3.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "emo-r3-tests")
    return tmp_path


def test_a_resumed_run_continues_its_wandb_and_mlflow_runs(
    tracking_env: Path, one_image_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tracking_env / "run"
    algorithm = {"group_size": 2, "kl_coef": 0.0}  # the least work a step can be
    config = TrainConfig.load(
        tiny_train_config(
            run_dir, one_image_dataset, mode="shared", steps=4, save_every=2, algorithm=algorithm,
            report_to=["tensorboard", "wandb", "mlflow"],
        )
    )  # fmt: skip
    sent: dict[int, dict[str, float]] = {}

    def die_after_step_3(done: int, metrics: dict[str, float]) -> None:
        sent[done - 1] = metrics
        if done == 3:  # the checkpoint is at step 2: step index 2 is redone after the resume
            raise Killed

    with pytest.raises(Killed):
        LocalTrainer(config).train(die_after_step_3)
    resumed = LocalTrainer(config)
    assert resumed.step == 2
    assert "steps 2-2 are redone from the checkpoint; the wandb run keeps the values" in caplog.text
    redone, sent[3] = resumed.train()
    runs = json.loads((run_dir / "trackers.json").read_text())
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("reward/mean")] == [0, 1, 2, 3]  # TensorBoard purged the redone step
    assert set(events.Tags()["scalars"]) == set(sent[0])

    # W&B: each start wrote an offline run folder with the same run id; together they hold each step once. The run
    # files are read once W&B's service has stopped: `finish()` can return before the service has flushed them.
    wandb.teardown()
    folders = sorted((tracking_env / "wandb").glob(f"offline-run-*-{runs['wandb']['run_id']}"))
    offline = sorted((offline_run(folder) for folder in folders), key=lambda run: run.run.start_time.seconds)
    assert len(offline) == 2
    assert {(run.run.project, run.run.display_name) for run in offline} == {("emo-r3-tests", "run")}
    assert offline[0].config["algorithm"]["group_size"] == 2 and offline[0].config["steps"] == 4
    assert [step for step, _ in offline[0].history] == [0, 1, 2]
    assert [step for step, _ in offline[1].history] == [3]  # step 2, redone, was not sent again
    for step, row in [*offline[0].history, *offline[1].history]:
        assert {k: v for k, v in row.items() if not k.startswith("_")} == pytest.approx(sent[step])
    assert redone.keys() == sent[2].keys()

    # MLflow: one run, finished again after the resume, the config as parameters, each metric once per step.
    client = MlflowClient()
    run = client.get_run(runs["mlflow"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "emo-r3-tests"
    assert (run.info.run_name, run.info.status) == ("run", "FINISHED")
    params = run.data.params
    assert (params["algorithm.group_size"], params["steps"], params["report_to"]) == (
        "2",
        "4",
        '["tensorboard", "wandb", "mlflow"]',
    )
    assert set(run.data.metrics) == set(sent[0])
    for name in ("reward/mean", "loss", "grad_norm/shared"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert [step for step, _ in points] == [0, 1, 2, 3]
        assert [value for _, value in points] == pytest.approx([sent[step][name] for step in range(4)])


def test_an_unusable_mlflow_store_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow 3 refuses its file store unless opted in; the error names the store and what to set."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    config = TrainConfig.load(
        {
            "run_dir": str(tmp_path / "run"), "data": {"kind": "fi", "path": str(tmp_path)},
            "report_to": ["mlflow"], "mlflow": {"tracking_uri": f"file:{tmp_path / 'mlruns'}"},
        }
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"(?s)MLflow cannot open the tracking store 'file:.*mlflow.tracking_uri"):
        open_trackers(config, start_step=0)
