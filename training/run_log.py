"""What a training run leaves behind each step: every rollout as a trace-store run (source `train`) with its reward
breakdowns and advantages, the step's metrics and the rows it trained on (each pointing at its call), and the step's
metrics for the experiment trackers of `report_to` (TensorBoard, W&B, MLflow). So any number on a chart leads back to
the calls that produced it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from emo_r3.agents.call_record import Role
from emo_r3.graphs.traces.records import TrainingRowRecord
from emo_r3.graphs.traces.store import TraceStore
from emo_r3.training.config import TrainConfig
from emo_r3.training.rows import RowKey
from emo_r3.training.scoring import Scored
from emo_r3.training.trackers import close_trackers, open_trackers


class RunLog:
    """The log of `config`'s run, which goes on from step `start_step` (0, or the resumed checkpoint's step)."""

    def __init__(self, config: TrainConfig, *, start_step: int) -> None:
        self.run_name = config.name
        self.store = TraceStore(config.run_dir / "traces.sqlite") if config.traces else None
        self.trackers = open_trackers(config, start_step)

    def record_rollouts(self, scored: Sequence[Scored], step: int, config_hash: str) -> dict[str, str]:
        """Each rollout as a run with its reward breakdowns; trajectory id -> run id."""
        if self.store is None:
            return {}
        run_ids = {}
        for s in scored:
            result, trajectory = s.rollout.result, s.trajectory
            images = {i.sha256: i for call in trajectory.calls for m in call.messages for i in m.images}
            run_ids[trajectory.id] = run_id = self.store.record_run(
                result, source="train", images=list(images.values()), config_hash=config_hash,
                input_ref=f"{self.run_name} step {step} item {s.rollout.item.id} sample {s.rollout.sample}",
            )  # fmt: skip
            for role, breakdown in s.rewards.items():
                values = {**breakdown.terms, "total": breakdown.total}
                if role in s.advantages:
                    values["advantage"] = s.advantages[role]
                self.store.record_rewards(run_id, values, role=role)
        return run_ids

    def record_step(
        self,
        step: int,
        metrics: Mapping[str, float],
        scored: Sequence[Scored],
        row_values: Mapping[RowKey, dict[str, float]],
        run_ids: Mapping[str, str],
        policy_of: Mapping[Role, str],
    ) -> None:
        """The step's metrics (trackers and trace store) and one record per trained row, linked to its call."""
        for tracker in self.trackers:
            tracker.log(step, metrics)
        if self.store is None:
            return
        by_id = {s.trajectory.id: s for s in scored}
        records = []
        for (trajectory_id, call_idx), values in row_values.items():
            scored_run = by_id[trajectory_id]
            role = scored_run.trajectory.calls[call_idx].role
            records.append(
                TrainingRowRecord(
                    run_id=run_ids[trajectory_id],
                    call_idx=call_idx,
                    policy=policy_of[role],
                    advantage=scored_run.advantages[role],
                    values=values,
                )
            )
        self.store.record_training_step(self.run_name, step, dict(metrics), records)

    def close(self) -> None:
        close_trackers(self.trackers)
