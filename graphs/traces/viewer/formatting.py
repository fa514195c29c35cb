"""How numbers, times and ids read on the pages."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any


def local_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_id(run_id: str) -> str:
    return run_id[:8] if re.fullmatch(r"[0-9a-f]{32}", run_id) else run_id[:24]


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
