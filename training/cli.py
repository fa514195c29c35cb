"""`emo-r3 train --config train.yaml`: joint RL of the graph's roles with the `local` trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from graphs.config import ConfigError
from training.config import TrainConfig

train_app = typer.Typer(help="Train the graph's roles jointly with RL (local trainer).", invoke_without_command=True)
err = Console(stderr=True)


@train_app.callback()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="training config (YAML)")],
    steps: Annotated[int | None, typer.Option(help="train to this step instead of the config's `steps`")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run folder (checkpoints, traces, TensorBoard)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train to `steps`, resuming from the run folder's latest checkpoint if there is one."""
    try:
        cfg = TrainConfig.load(config)
    except ConfigError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    updates = {k: v for k, v in {"steps": steps, "run_dir": run_dir}.items() if v is not None}
    cfg = cfg.model_copy(update=updates)
    try:
        _run(cfg, progress)
    except _user_errors() as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures whose message tells the user what to do; anything else is a bug and keeps its traceback."""
    from agents.hf_loading import ModelLoadError
    from agents.offline_models import OfflineModelError
    from evals.loaders import DatasetError
    from training.checkpoint import CheckpointError
    from training.local_trainer import TrainingError
    from training.rows import RowError
    from training.vllm_sync import AdapterSyncError

    return (
        ConfigError, DatasetError, ModelLoadError, OfflineModelError, CheckpointError, TrainingError, RowError,
        AdapterSyncError,
    )  # fmt: skip


def _run(cfg: TrainConfig, progress: bool) -> None:
    from training.local_trainer import LocalTrainer  # torch loads only when training really starts

    trainer = LocalTrainer(cfg)
    if trainer.step:
        err.print(f"resuming {cfg.run_dir} at step {trainer.step}")
    columns = (
        TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("reward {task.fields[reward]:.3f}  loss {task.fields[loss]:+.4f}"),
    )  # fmt: skip
    with Progress(*columns, console=err, disable=not progress) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=trainer.step, reward=0.0, loss=0.0)

        def advance(step: int, metrics: dict[str, float]) -> None:
            bar.update(task, completed=step, reward=metrics["reward/mean"], loss=metrics.get("loss", 0.0))
            if not progress:
                err.print(f"step {step}: reward {metrics['reward/mean']:.4f} loss {metrics.get('loss', 0.0):+.5f}")

        trainer.train(on_step=advance)
    err.print(f"done: {cfg.run_dir} (checkpoints, traces.sqlite, tensorboard/)")
