"""`emo-r3 train --config train.yaml`: joint RL of the graph's roles, by the `local` trainer (one process) or the
`openrlhf` trainer (OpenRLHF's DeepSpeed actors on a Ray cluster); `emo-r3 export RUN_DIR --out DIR`: a run's trained
policies as Hugging Face / PEFT folders.

`emo-r3 --help` loads this module to list the commands, so torch (through the training config) loads only inside them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from emo_r3.agents.model_specs import ConfigError
from emo_r3.graphs.cli.console import data, err, print_error
from emo_r3.graphs.cli.exit_codes import ExitCode

if TYPE_CHECKING:
    from emo_r3.training.cluster.cluster_trainer import ClusterTrainer
    from emo_r3.training.config import TrainConfig
    from emo_r3.training.local_trainer import LocalTrainer

train_app = typer.Typer(
    help="Train the graph's roles jointly with RL (local trainer, or OpenRLHF on Ray).",
    invoke_without_command=True,
    add_completion=False,
)


@train_app.callback()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="training config (YAML)")],
    steps: Annotated[int | None, typer.Option(help="train to this step instead of the config's `steps`")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run folder (checkpoints, traces, TensorBoard)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train to `steps`, resuming from the run folder's latest checkpoint if there is one."""
    from emo_r3.training.config import TrainConfig

    try:
        cfg = TrainConfig.load(config)
    except ConfigError as error:
        print_error(error)
        raise typer.Exit(2) from error
    updates = {k: v for k, v in {"steps": steps, "run_dir": run_dir}.items() if v is not None}
    cfg = cfg.model_copy(update=updates)
    try:
        _run(cfg, progress)
    except _user_errors() as error:
        print_error(error)
        raise typer.Exit(1) from error


export_app = typer.Typer(add_completion=False)


@export_app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="the run folder of `emo-r3 train`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="a new or empty folder to write")],
    merge_lora: Annotated[
        bool, typer.Option("--merge-lora", help="lora runs: each role's adapter merged into the base, as a full model")
    ] = False,
    step: Annotated[int | None, typer.Option(min=0, help="the checkpoint of this step (default: the latest)")] = None,
) -> None:
    """Export a run's trained policies as Hugging Face or PEFT folders.

    One folder per trained policy (named after it: `shared`, or the role), loadable by `from_pretrained` and `vllm
    serve`, and export.json + README.md saying which role uses which folder, from which run and step."""
    from emo_r3.training.export import ExportError, export_run

    try:
        manifest = export_run(run_dir, out, merge_lora=merge_lora, step=step)
    except (ExportError, *_user_errors()) as error:
        print_error(error)
        raise typer.Exit(ExitCode.USAGE) from error
    for name, policy in manifest.policies.items():
        kind = "PEFT adapter" if policy.format == "peft" else "Hugging Face model"
        err.print(data(f"{out / policy.folder}: {kind} of {name!r}, roles {', '.join(policy.roles)}"))
    err.print(data(f"done: {out} ({manifest.checkpoint} of {manifest.run_dir}; see export.json)"))


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures whose message tells the user what to do; anything else is a bug and keeps its traceback."""
    from emo_r3.agents.backends.transformers.loading import ModelLoadError
    from emo_r3.agents.backends.vllm.adapters import AdapterSyncError
    from emo_r3.agents.backends.vllm.process import VLLMProcessError
    from emo_r3.agents.backends.vllm.weights import WeightSyncError
    from emo_r3.agents.offline_models import OfflineModelError
    from emo_r3.evals.datasets import DatasetError
    from emo_r3.graphs.traces.store import TraceStoreError
    from emo_r3.training.checkpoint import CheckpointError
    from emo_r3.training.rollouts import TrainingError
    from emo_r3.training.rows import RowError

    return (
        ConfigError, DatasetError, ModelLoadError, OfflineModelError, CheckpointError, TrainingError, RowError,
        AdapterSyncError, WeightSyncError, TraceStoreError, VLLMProcessError,
    )  # fmt: skip


@contextlib.contextmanager
def _trainer(cfg: TrainConfig) -> Iterator[LocalTrainer | ClusterTrainer]:
    """The configured trainer; torch (and Ray) load only when training really starts. The cluster trainer's servers
    and actors stop when the block ends."""
    if cfg.trainer == "local":
        from emo_r3.training.local_trainer import LocalTrainer

        yield LocalTrainer(cfg)
        return
    try:
        from emo_r3.training.cluster.cluster_trainer import ClusterTrainer
    except ImportError as error:
        raise ConfigError(
            f"trainer 'openrlhf' needs OpenRLHF and what it imports (Ray, DeepSpeed, flash-attn, vLLM) in this "
            f"environment: {error}. Install them with pip install 'emo-r3[cluster]' (see README, Cluster training)"
        ) from error
    with ClusterTrainer(cfg) as trainer:
        yield trainer


def _run(cfg: TrainConfig, progress: bool) -> None:
    with _trainer(cfg) as trainer:
        if trainer.step:
            err.print(data(f"resuming {cfg.run_dir} at step {trainer.step}"))
        _train(trainer, cfg.steps, progress)
    written = [
        "checkpoints/",
        *(["traces.sqlite"] if cfg.traces else []),
        *(["tensorboard/"] if "tensorboard" in cfg.report_to else []),
    ]
    err.print(data(f"done: {cfg.run_dir} ({', '.join(written)})"))


def _train(trainer: LocalTrainer | ClusterTrainer, steps: int, progress: bool) -> None:
    columns = (
        TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("reward {task.fields[reward]:.3f}  loss {task.fields[loss]:+.4f}"),
    )  # fmt: skip
    with Progress(*columns, console=err, disable=not progress) as bar:
        task = bar.add_task("train", total=steps, completed=trainer.step, reward=0.0, loss=0.0)

        def advance(step: int, metrics: dict[str, float]) -> None:
            reward, loss = metrics["reward/mean"], metrics.get("loss", 0.0)
            bar.update(task, completed=step, reward=reward, loss=loss)
            if not progress:
                err.print(data(f"step {step}: reward {reward:.4f} loss {loss:+.5f}"))

        trainer.train(on_step=advance)
