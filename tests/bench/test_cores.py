"""A core's busy share comes from /proc/stat's per-CPU ticks: idle and iowait are free time,
everything else (steal included) is busy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cores import CoreTicks, core_ticks, pinned_cpu

STAT = """cpu  900 0 300 2000 50 0 10 0 0 0
cpu0 400 0 100 1000 20 0 5 0 0 0
cpu1 500 0 200 1000 30 0 5 40 0 0
intr 12345
"""


def test_busy_ticks_are_all_but_idle_and_iowait(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    assert core_ticks(0, str(stat)) == CoreTicks(505, 1525)
    assert core_ticks(1, str(stat)) == CoreTicks(745, 1775)  # steal counts as busy
    assert core_ticks(7, str(stat)) is None
    assert core_ticks(0, str(tmp_path / "absent")) is None


def test_the_share_is_of_the_window_between_two_readings() -> None:
    window = CoreTicks(190, 1200) - CoreTicks(100, 1100)
    assert window.share == pytest.approx(0.9)
    assert (CoreTicks(5, 5) - CoreTicks(5, 5)).share is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_pinned_cpu_names_the_one_cpu_a_process_may_use() -> None:
    original = os.sched_getaffinity(0)
    cpu = min(original)
    try:
        os.sched_setaffinity(0, {cpu})
        assert pinned_cpu() == cpu
        assert core_ticks(cpu) is not None  # this machine's /proc/stat lists it
    finally:
        os.sched_setaffinity(0, original)
    assert pinned_cpu() == (cpu if len(original) == 1 else None)
