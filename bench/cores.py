"""How busy one CPU was over a window, from the kernel's per-CPU counters (/proc/stat): the
load generator's core near saturation means the harness, not the server, set the pace."""

from __future__ import annotations

import os
from dataclasses import dataclass

# /proc/stat's per-CPU fields after the name: user nice system idle iowait irq softirq steal
# (guest time is already counted in user). Idle and iowait are the core's free time; steal
# (the hypervisor ran someone else) is time the core was not ours, so it counts as busy.
_IDLE, _IOWAIT, _FIELDS = 3, 4, 8


@dataclass(frozen=True, slots=True)
class CoreTicks:
    """Clock ticks (USER_HZ, 10 ms) one CPU spent busy, and in all, since boot."""

    busy: int
    total: int

    def __sub__(self, earlier: CoreTicks) -> CoreTicks:
        return CoreTicks(self.busy - earlier.busy, self.total - earlier.total)

    @property
    def share(self) -> float | None:
        """Busy share of the window (0..1); None for a window under one tick."""
        return self.busy / self.total if self.total > 0 else None


def core_ticks(cpu: int, stat: str = "/proc/stat") -> CoreTicks | None:
    """CPU `cpu`'s counters; None where /proc/stat is absent or does not list it."""
    prefix = f"cpu{cpu} "
    try:
        with open(stat, encoding="ascii") as f:
            for line in f:
                if line.startswith(prefix):
                    ticks = [int(v) for v in line.split()[1 : 1 + _FIELDS]]
                    total = sum(ticks)
                    return CoreTicks(total - ticks[_IDLE] - ticks[_IOWAIT], total)
    except (OSError, ValueError):
        return None
    return None


def pinned_cpu(pid: int = 0) -> int | None:
    """The one CPU process `pid` (0: this one) may run on; None when it may run on several."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = os.sched_getaffinity(pid)
    return next(iter(cpus)) if len(cpus) == 1 else None
