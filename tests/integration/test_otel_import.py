"""OpenTelemetry is an optional extra: importing the exporter without it says which extra to install. In a child
process, so the missing package cannot leak into the other tests' imports."""

from __future__ import annotations

import subprocess
import sys

from repo import ROOT


def test_import_without_opentelemetry_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import emo_r3.graphs.traces.otel\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "pip install 'emo-r3[otel]'" in done.stdout
