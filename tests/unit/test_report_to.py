"""`report_to` in the training config: TensorBoard by default, the old `tensorboard` switch still honoured (with a
deprecation warning), unknown or repeated trackers refused, and a tracker whose package is missing named with the extra
that installs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from emo_r3.agents.model_specs import ConfigError
from emo_r3.training.config import TrainConfig
from emo_r3.training.trackers import open_trackers


def config(tmp_path: Path, **fields: object) -> TrainConfig:
    return TrainConfig.load({"run_dir": str(tmp_path / "run"), "data": {"kind": "fi", "path": str(tmp_path)}, **fields})


def test_tensorboard_is_the_default(tmp_path: Path) -> None:
    assert config(tmp_path).report_to == ["tensorboard"]


@pytest.mark.parametrize(
    ("fields", "report_to"),
    [
        ({"tensorboard": False}, []),
        ({"tensorboard": True}, ["tensorboard"]),
        ({"tensorboard": True, "report_to": ["mlflow"]}, ["tensorboard", "mlflow"]),
        ({"tensorboard": False, "report_to": ["tensorboard", "wandb"]}, ["wandb"]),
    ],
)
def test_the_old_tensorboard_switch_still_works_with_a_warning(
    tmp_path: Path, fields: dict, report_to: list[str]
) -> None:
    with pytest.warns(FutureWarning, match="list the trackers in `report_to`"):
        assert config(tmp_path, **fields).report_to == report_to


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"report_to": ["comet"]}, r"report_to\.0\n.*'tensorboard', 'wandb' or 'mlflow'"),
        ({"report_to": ["wandb", "mlflow", "wandb"]}, "report_to lists wandb more than once"),
        ({"report_to": "wandb"}, r"report_to\n.*valid list"),
        ({"tensorboard": "yes"}, "tensorboard must be true or false"),
        ({"wandb": {"projet": "x"}}, r"wandb\.projet\n.*Extra inputs are not permitted"),
    ],
)
def test_bad_report_to_settings_name_the_field(tmp_path: Path, fields: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config(tmp_path, **fields)


@pytest.mark.parametrize(("tracker", "module"), [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    monkeypatch.delitem(sys.modules, f"emo_r3.training.{tracker}_tracker", raising=False)
    with pytest.raises(ConfigError, match=rf"report_to lists {tracker}, which is not installed .*emo-r3\[tracking\]"):
        open_trackers(config(tmp_path, report_to=[tracker]), start_step=0)
    assert not (tmp_path / "run" / "trackers.json").exists()


def test_an_unreadable_tracker_runs_file_says_how_to_start_over(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trackers.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"trackers\.json cannot be read .*delete it to report to new runs"):
        open_trackers(config(tmp_path, report_to=["wandb"]), start_step=0)
