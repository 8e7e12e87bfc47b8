"""The benchmark's server processes: started, pinned, awaited by ready line, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STOP_GRACE_S = 5.0


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, a path failed every request)."""


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU the load generator and the upstream share and which one the server under
    test has to itself (None: unpinned)."""

    client_cpu: int | None
    server_cpu: int | None
    note: str

    @classmethod
    def plan(cls, enabled: bool) -> Pinning:
        if not enabled:
            return cls(None, None, "pinning: off (--no-pin)")
        if not hasattr(os, "sched_setaffinity"):
            return cls(None, None, "pinning: unavailable (no os.sched_setaffinity)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, f"pinning: unavailable (only cpu {cpus} allowed)")
        client, server = cpus[0], cpus[1]
        return cls(
            client,
            server,
            f"pinning: load generator and upstream on cpu {client}; server under test on "
            f"cpu {server}",
        )


def pin(pid: int, cpu: int | None) -> None:
    """Pin `pid` (0: this thread, and the threads it starts from now on) to `cpu`."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


@dataclass(frozen=True, slots=True)
class SchedTimes:
    """Seconds the threads of a process spent on a CPU, and waiting on a run queue for one
    (ready to run, while something else ran: the cost of other work on its core)."""

    cpu_s: float
    wait_s: float | None

    def __sub__(self, earlier: SchedTimes) -> SchedTimes:
        wait = (
            None if self.wait_s is None or earlier.wait_s is None else self.wait_s - earlier.wait_s
        )
        return SchedTimes(self.cpu_s - earlier.cpu_s, wait)


def sched_times(pid: int) -> SchedTimes | None:
    """What every live thread of process `pid` spent; None where /proc is absent.

    The scheduler's own counts (/proc/PID/task/TID/schedstat, nanoseconds) where the kernel
    keeps them: /proc/PID/stat counts CPU in clock ticks (10 ms), too coarse for a window
    that spends under a second of CPU, and has no run-queue wait. A thread that ends inside
    a window takes its time with it; the servers measured here keep their threads.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    cpu_ns = wait_ns = 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                fields = f.read().split()
            cpu_ns += int(fields[0])
            wait_ns += int(fields[1])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError):
            cpu = _stat_cpu_seconds(pid)
            return None if cpu is None else SchedTimes(cpu, None)
    return SchedTimes(cpu_ns / 1e9, wait_ns / 1e9)


def _stat_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` from /proc/PID/stat, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process `pid` (VmRSS); None where /proc is absent or it exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class ServerProcess:
    """One child server. Lifecycle: construct (starts it and pins it at once, before it can
    start threads), `await wait_line(prefix)` for each ready line, `stop()` in a finally.

    stdout is read by a thread until EOF so the child never blocks on a full pipe; stderr
    goes to a temp file, shown when the child fails to start.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        # Lives as long as the child (closed in stop()), so no `with` block fits it.
        self._stderr = tempfile.TemporaryFile(  # noqa: SIM115
            mode="w+", encoding="utf-8", errors="replace"
        )
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=child_env,
        )
        self.pid = self._popen.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        try:
            pin(self.pid, cpu)  # now: the child is still starting Python, it has no threads yet
        except OSError:
            self.stop()
            raise
        self._reader.start()

    def _read(self) -> None:
        stdout = self._popen.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    async def wait_line(self, prefix: str, within_s: float) -> str:
        """The first stdout line starting with `prefix`; BenchError if it exits or times out."""
        end = time.monotonic() + within_s
        while (left := end - time.monotonic()) > 0:
            try:
                line = await asyncio.to_thread(self._lines.get, True, min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise BenchError(f"{self.name} exited before it was ready:\n{self.stderr_tail()}")
            if line.startswith(prefix):
                return line
        raise BenchError(f"{self.name} not ready after {within_s:g}s:\n{self.stderr_tail()}")

    def running(self) -> bool:
        return self._popen.poll() is None

    def sched_times(self) -> SchedTimes | None:
        return sched_times(self.pid)

    def rss_bytes(self) -> int | None:
        return rss_bytes(self.pid)

    def stderr_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return "".join(self._stderr.readlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S; only this child's PID is signalled."""
        popen = self._popen
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if self._reader.is_alive():
            self._reader.join(STOP_GRACE_S)  # EOF follows the exit; then the pipe can close
        if popen.stdout is not None and not self._reader.is_alive():
            popen.stdout.close()
        self._stderr.close()


class Servers:
    """The child processes of one run. Lifecycle: `start()` each (pinned at once: a server
    under test to the server core, helpers to the load generator's), `await address()` for
    what it announced, `stop_all()` in a finally, whatever happened."""

    def __init__(self, pinning: Pinning, timeout_s: float) -> None:
        self._pinning = pinning
        self._timeout = timeout_s
        self.started: list[ServerProcess] = []
        # (process name, ready prefix) -> the address its ready line announced
        self.addresses: dict[tuple[str, str], str] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        under_test: bool,
        env: Mapping[str, str] | None = None,
    ) -> ServerProcess:
        cpu = self._pinning.server_cpu if under_test else self._pinning.client_cpu
        proc = ServerProcess(name, argv, cpu=cpu, env=env)
        self.started.append(proc)  # at once: stop_all() stops it whatever happens next
        return proc

    async def address(self, proc: ServerProcess, prefix: str) -> str:
        """What `proc` announced after `prefix` (waited for the first time)."""
        key = (proc.name, prefix)
        if key not in self.addresses:
            line = await proc.wait_line(prefix, self._timeout)
            self.addresses[key] = line[len(prefix) :]
        return self.addresses[key]

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
