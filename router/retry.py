"""Backoff between retries of the same deployment: exponential with full jitter."""

from __future__ import annotations

import random

from router.config import RetryConfig


def backoff_s(retry: RetryConfig, retry_number: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry_number` (0 for the first retry):
    uniform in [0, min(max, base * 2**n)]. Full jitter spreads a burst of callers that
    failed together, so they do not hit the recovering deployment in lockstep."""
    exponent = min(max(retry_number, 0), 30)  # 2**30 * base already exceeds any sane max
    cap_ms = min(retry.backoff_max_ms, retry.backoff_base_ms * (1 << exponent))
    return rng.uniform(0.0, cap_ms) / 1000.0
