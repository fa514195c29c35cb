"""Options several `emo-r3` commands share, declared once: `config: options.Config = None`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Config = Annotated[Path | None, typer.Option("--config", "-c", help="graph config YAML (default: offline)")]
LabelSet = Annotated[str | None, typer.Option("--label-set", help="mikels8, emotion6, ekman7, parrott6, or 'a,b,c'")]
MaxRounds = Annotated[int | None, typer.Option("--max-rounds", min=0, help="corrections allowed (0 = score only)")]
Traces = Annotated[Path, typer.Option("--traces", help="trace store (SQLite) every run is recorded in")]
NoTraces = Annotated[bool, typer.Option("--no-traces", help="do not record traces")]
Otlp = Annotated[
    str | None,
    typer.Option("--otlp", help="also export each run as OpenTelemetry spans, e.g. http://127.0.0.1:4318/v1/traces"),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", help="also show the libraries' own warnings, log lines and progress bars")
]
