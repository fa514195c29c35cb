"""The vLLM client's retry waits: full-jitter backoff, the server's Retry-After, and the per-call budget."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from emo_r3.agents.backends.vllm.retry_policy import RetryPolicy, next_wait, retry_after_s
from emo_r3.agents.model_specs import VLLMModelSpec

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_retries=8, backoff_s=0.5, backoff_cap_s=3.0, retry_budget_s=1000.0)


def waits(retry: int, count: int = 2000, *, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [next_wait(POLICY, retry, waited_s=0.0, retry_after=None, rng=rng) or 0.0 for _ in range(count)]


@pytest.mark.parametrize(("retry", "window"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (7, 3.0)])
def test_backoff_stays_within_its_doubling_capped_window(retry: int, window: float) -> None:
    drawn = waits(retry)
    assert min(drawn) >= 0.0 and max(drawn) <= window
    assert max(drawn) > 0.95 * window, "the window is used up to its top"


def test_full_jitter_spreads_waits_over_the_whole_window() -> None:
    drawn = waits(2)  # window 2 s
    deciles = [sum(0.2 * k <= w < 0.2 * (k + 1) for w in drawn) for k in range(10)]
    assert all(150 <= count <= 250 for count in deciles), deciles  # 200 expected in each; ±50 is > 3.5 sigma
    assert len(set(drawn)) == len(drawn), "no two calls share a wait"
    assert waits(2, seed=7) == drawn and waits(2, seed=8) != drawn, "the generator alone decides the draws"


def test_a_server_wait_replaces_the_backoff_and_is_not_shortened() -> None:
    rng = random.Random(0)
    assert next_wait(POLICY, 0, waited_s=0.0, retry_after=12.0, rng=rng) == 12.0  # above backoff_cap_s: still kept
    assert next_wait(POLICY, 5, waited_s=0.0, retry_after=0.0, rng=rng) == 0.0


def test_no_wait_past_the_budget() -> None:
    policy = RetryPolicy(backoff_s=1.0, retry_budget_s=10.0)
    rng = random.Random(0)
    assert next_wait(policy, 0, waited_s=4.0, retry_after=6.0, rng=rng) == 6.0, "exactly the budget is allowed"
    assert next_wait(policy, 0, waited_s=4.0, retry_after=6.5, rng=rng) is None
    assert next_wait(policy, 0, waited_s=0.0, retry_after=3600.0, rng=rng) is None
    assert next_wait(policy, 0, waited_s=9.5, retry_after=None, rng=random.Random(1)) is not None  # draws 0.13 s
    assert next_wait(policy, 3, waited_s=10.0, retry_after=None, rng=random.Random(1)) is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Sat Mar  1 12:00:05 2025", 5.0),  # obsolete asctime form, no zone: GMT
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # a date already past: retry now
    ],
)
def test_retry_after_seconds_and_dates(header: str, seconds: float) -> None:
    assert retry_after_s(header, now=NOW) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "1.5", "-3", "²"])
def test_unreadable_retry_after_leaves_the_backoff_in_charge(header: str | None) -> None:
    assert retry_after_s(header, now=NOW) is None


def test_retry_after_dates_round_trip_through_the_http_format() -> None:
    later = NOW + timedelta(seconds=90)
    assert retry_after_s(format_datetime(later, usegmt=True), now=NOW) == 90.0


def test_bad_spec_settings_say_what_to_change() -> None:
    with pytest.raises(
        ValidationError, match=r"backoff_cap_s \(30.0\) is below backoff_s \(60.0\).*raise backoff_cap_s"
    ):
        VLLMModelSpec(backend="vllm", base_url="http://x", model="m", backoff_s=60)
    with pytest.raises(ValidationError, match="retry_budget_s"):
        VLLMModelSpec(backend="vllm", base_url="http://x", model="m", retry_budget_s=0)
