"""OpenTelemetry is an optional extra: importing the exporter without it says which extra to install, and the
command line needs it only when `--otlp` or an OTEL_EXPORTER_OTLP_* endpoint asks for spans. In child processes,
so the missing package cannot leak into the other tests' imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from repo import ROOT

WITHOUT_OPENTELEMETRY = "import sys\nsys.modules['opentelemetry'] = None\n"


def run_without_opentelemetry(code: str, **environ: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | environ
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY + code],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_import_without_opentelemetry_names_the_extra():
    code = "try:\n    import emo_r3.graphs.traces.otel\nexcept ImportError as error:\n    print(error)\n"
    assert "pip install 'emo-r3[otel]'" in run_without_opentelemetry(code).stdout


CHOOSE = (  # as a command runs it: typer turns Exit into the process's exit status
    "import typer\n"
    "from emo_r3.graphs.traces.cli import otel_exporter\n"
    "try:\n"
    "    print('exporter:', otel_exporter({endpoint!r}))\n"
    "except typer.Exit as done:\n"
    "    sys.exit(done.exit_code)\n"
)  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "environ", "exit_code", "says"),
    [
        (None, {}, 0, "exporter: None"),  # nobody asked for spans: no extra needed, no export
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, 2, "OTEL_EXPORTER_OTLP_ENDPOINT asks for"),
        ("http://127.0.0.1:4318/v1/traces", {}, 2, "pip install 'emo-r3[otel]'"),
    ],
    ids=["nothing-asked", "variable-asks", "flag-asks"],
)
def test_the_cli_needs_the_extra_only_when_spans_are_asked_for(endpoint, environ, exit_code, says):
    done = run_without_opentelemetry(CHOOSE.format(endpoint=endpoint), **environ)
    assert done.returncode == exit_code, done.stderr
    assert says in done.stdout + done.stderr
    assert exit_code == 0 or "pip install 'emo-r3[otel]'" in done.stderr
