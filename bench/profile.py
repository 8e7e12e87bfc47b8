"""py-spy profiles of a server under test: recorded over a window, summed by function.

`imesh bench --profile` runs one extra, unmeasured round of the mesh's token streaming and
non-streaming scenarios under `py-spy record --nonblocking` (py-spy reads the process's
memory without pausing it) and writes the functions that took the most samples, on their
own (self) and with what they called (inclusive).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.processes import BenchError

RATE_HZ = 250
STOP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class FunctionShare:
    function: str
    self_share: float
    inclusive_share: float


def py_spy() -> str:
    """The py-spy executable beside this interpreter, else on PATH; BenchError without one."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    return found


@contextlib.asynccontextmanager
async def recording(pid: int, raw_path: Path) -> AsyncIterator[None]:
    """Samples `pid` while the block runs; the collapsed stacks land in `raw_path`."""
    proc = await asyncio.create_subprocess_exec(
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(RATE_HZ),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(raw_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    if not await asyncio.to_thread(raw_path.exists):
        stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
        raise BenchError(f"py-spy wrote no profile of pid {pid}: {stderr.strip()[-500:]}")


def summarise(lines: Iterable[str], top: int = 30) -> list[FunctionShare]:
    """Per function (its lines together), the share of samples with it at the top of the
    stack (self) and anywhere in it (inclusive), from py-spy's raw format
    ("f1;f2;...;fN COUNT" per line, each frame "name (path:line)")."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if total == 0:
        return []
    ranked = sorted(anywhere, key=lambda f: (-own[f], -anywhere[f], f))[:top]
    return [FunctionShare(f, own[f] / total, anywhere[f] / total) for f in ranked]


def _function(frame: str) -> str:
    """ "name (path:line)" -> "name (path)": a function's lines count as one function."""
    head, sep, place = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{head} ({place.rstrip(')').rpartition(':')[0] or place.rstrip(')')})"


def to_markdown(title: str, shares: list[FunctionShare], samples_note: str) -> str:
    lines = [
        f"# {title}",
        "",
        samples_note,
        "",
        "| self | inclusive | function |",
        "| ---: | ---: | --- |",
    ]
    for s in shares:
        lines.append(f"| {s.self_share:.1%} | {s.inclusive_share:.1%} | `{s.function}` |")
    return "\n".join(lines) + "\n"
