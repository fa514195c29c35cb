"""How long the vLLM client waits before trying a failed request again.

    wait = Retry-After if the server sent one, else uniform(0, min(backoff_cap_s, backoff_s * 2**retry));
    no retry when the waits so far plus this one would pass retry_budget_s.

Full jitter spreads the retries of many concurrent calls over the whole window, so a server that answered 64
calls with 429 at once does not get all 64 back at the same instant. A server's own Retry-After is never
shortened (retrying earlier would only earn another 429); the budget bounds it instead.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Self, TypedDict

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """The retry settings of one model; the vLLM model spec carries the same fields."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, description="tries after the first; 0 turns retries off")
    backoff_s: float = Field(
        1.0, gt=0, description="the first retry waits up to this long, each later one twice as long"
    )
    backoff_cap_s: float = Field(30.0, gt=0, description="no backoff window grows past this")
    retry_budget_s: float = Field(
        60.0, gt=0, description="seconds one call may spend waiting between tries, Retry-After included"
    )

    @model_validator(mode="after")
    def _cap_covers_the_first_backoff(self) -> Self:
        if self.backoff_cap_s < self.backoff_s:
            raise ValueError(
                f"backoff_cap_s ({self.backoff_cap_s}) is below backoff_s ({self.backoff_s}): the cap bounds the "
                "growing backoff, so raise backoff_cap_s or lower backoff_s"
            )
        return self


class RetrySettings(TypedDict, total=False):
    """RetryPolicy's fields as keyword arguments (unset ones take the policy's defaults)."""

    max_retries: int
    backoff_s: float
    backoff_cap_s: float
    retry_budget_s: float


def next_wait(
    policy: RetryPolicy, retry: int, *, waited_s: float, retry_after: float | None, rng: random.Random
) -> float | None:
    """Seconds to wait before retry number `retry` (0 for the first), or None when the budget does not allow it."""
    wait = retry_after
    if wait is None:
        wait = rng.uniform(0, min(policy.backoff_cap_s, policy.backoff_s * 2**retry))
    return None if waited_s + wait > policy.retry_budget_s else wait


def retry_after_s(value: str | None, *, now: datetime) -> float | None:
    """The seconds a Retry-After header asks for, as delta-seconds ("120") or an HTTP-date; None when absent or
    unreadable (the caller then backs off on its own). `now` must be timezone-aware."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime dates parse naive; every HTTP-date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
