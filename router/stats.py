"""Live per-deployment figures the policies read: in-flight, TTFT EWMA and p95."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

# Weight of the newest sample in the EWMA: recent enough to follow a degrading provider
# within a handful of calls, smooth enough that one slow call does not reorder a ranking.
EWMA_ALPHA = 0.2
# Recent samples kept for the p95 (bounded memory) and the fewest for which a p95 means
# anything; below it hedging uses its configured default delay.
RING_SIZE = 256
MIN_P95_SAMPLES = 20


class DeploymentStats:
    """In-flight count and time-to-first-token figures of one deployment.

    Owned by one event loop; `begin()`/`end()` bracket every attempt (hedges included).
    """

    __slots__ = ("_ewma", "_p95", "_samples", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self._ewma: float | None = None
        self._samples: deque[float] = deque(maxlen=RING_SIZE)
        # Cached between samples: the hedge delay reads it on every request.
        self._p95: float | None = None

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        if self.in_flight > 0:
            self.in_flight -= 1

    def record_ttft(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        self._ewma = (
            seconds if self._ewma is None else EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * self._ewma
        )
        self._samples.append(seconds)
        self._p95 = None

    @property
    def ttft_ewma(self) -> float | None:
        return self._ewma

    @property
    def ttft_samples(self) -> int:
        return len(self._samples)

    def ttft_p95(self) -> float | None:
        """Nearest-rank p95 of the recent samples; None until MIN_P95_SAMPLES exist."""
        if len(self._samples) < MIN_P95_SAMPLES:
            return None
        if self._p95 is None:
            ordered = sorted(self._samples)
            self._p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
        return self._p95

    def __repr__(self) -> str:
        return (
            f"DeploymentStats(in_flight={self.in_flight}, ttft_ewma={self._ewma}, "
            f"samples={len(self._samples)})"
        )


class StatsRegistry:
    """Stats by deployment name, created on first use."""

    def __init__(self) -> None:
        self._by_name: dict[str, DeploymentStats] = {}

    def __getitem__(self, deployment_name: str) -> DeploymentStats:
        stats = self._by_name.get(deployment_name)
        if stats is None:
            stats = self._by_name[deployment_name] = DeploymentStats()
        return stats

    def __contains__(self, deployment_name: object) -> bool:
        return deployment_name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)
