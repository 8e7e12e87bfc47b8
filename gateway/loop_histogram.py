"""LoopHistogram: a Prometheus histogram's figures as plain numbers, for hot paths that
run on one event loop (no lock), rendered into a metric family at scrape time."""

from __future__ import annotations

import math
from bisect import bisect_left

from prometheus_client.core import HistogramMetricFamily


class LoopHistogram:
    """Bucket counts and a sum. `observe` is one bisect and two additions; only the event
    loop that owns it may call it, and the scrape must run on that loop too."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as HistogramMetricFamily.add_metric takes them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if math.isinf(bound) else str(float(bound)), running))
        return out


class LoopHistograms:
    """One LoopHistogram per label value, made on first use; rendered as one family."""

    __slots__ = ("_bounds", "_by_label")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._by_label: dict[str, LoopHistogram] = {}

    def observe(self, label: str, value: float) -> None:
        self.histogram(label).observe(value)

    def histogram(self, label: str) -> LoopHistogram:
        """The label's histogram (made on first use), for callers that keep it at hand."""
        histogram = self._by_label.get(label)
        if histogram is None:
            histogram = self._by_label[label] = LoopHistogram(self._bounds)
        return histogram

    def family(self, name: str, documentation: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=(label,))
        for value, histogram in self._by_label.items():
            family.add_metric((value,), histogram.cumulative(), histogram.total)
        return family
