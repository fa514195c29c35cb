"""`run_dir/trackers.json`: the W&B and MLflow runs a run folder reports to (where each lives, its id) and the last
step each one received, so that a killed run started again continues the same runs without sending a step twice."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from emo_r3.agents.model_specs import ConfigError

SavedRun = TypeVar("SavedRun", bound=BaseModel)
LOGGED_THROUGH = "logged_through"


class TrackerRuns:
    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def _runs(self) -> dict[str, dict[str, Any]]:  # read on first use: TensorBoard alone never needs the file
        if not self.path.exists():
            return {}
        try:
            runs = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise self._unreadable(str(error)) from error
        if not isinstance(runs, dict) or not all(isinstance(run, dict) for run in runs.values()):
            raise self._unreadable("not an object of runs")
        return runs

    def _unreadable(self, why: str) -> ConfigError:
        return ConfigError(
            f"{self.path} cannot be read ({why}); it names the W&B / MLflow runs this run folder continues: "
            "delete it to report to new runs instead"
        )

    def saved(self, tracker: str, model: type[SavedRun]) -> SavedRun | None:
        """The run `tracker` reported to before in this run folder, if any."""
        if tracker not in self._runs:
            return None
        try:
            return model.model_validate({k: v for k, v in self._runs[tracker].items() if k != LOGGED_THROUGH})
        except ValidationError as error:
            raise self._unreadable(f"its {tracker} entry: {error}") from error

    def remember(self, tracker: str, run: BaseModel) -> None:
        """Keep `run` as the one `tracker` reports to, before any step goes to it."""
        self._runs[tracker] = {**run.model_dump(mode="json"), LOGGED_THROUGH: self.logged_through(tracker)}
        self._write()

    def logged_through(self, tracker: str) -> int:
        """The last step `tracker` received (-1: none)."""
        return int(self._runs.get(tracker, {}).get(LOGGED_THROUGH, -1))

    def set_logged_through(self, tracker: str, step: int) -> None:
        self._runs[tracker][LOGGED_THROUGH] = step
        self._write()

    def _write(self) -> None:
        # Whole or not at all: a kill mid-write must not cost the ids of runs that hold the earlier steps.
        partial = self.path.with_name(f".{self.path.name}.tmp")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(self._runs, indent=2))
        os.replace(partial, self.path)
