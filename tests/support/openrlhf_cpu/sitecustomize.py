"""Runs at start-up of every Python that has this folder on PYTHONPATH (the CPU cluster tests' driver and Ray
workers): the import stand-ins go to the END of sys.path, so an environment with the real flash-attn or vLLM (the
vLLM server's) still imports its own."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent / "stand_ins"))
