"""What a benchmark run ran on: date, commit, machine, load, and the versions that matter."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.litellm_env import VERSION as LITELLM_VERSION
from bench.processes import Pinning

PACKAGES = (
    "grpcio",
    "protobuf",
    "httpx",
    "httpcore",
    "httpx-aiohttp",
    "aiohttp",
    "orjson",
    "uvloop",
    "uvicorn",
    "starlette",
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """HEAD, marked when the tree measured differs from it (results excluded)."""
    root = str(Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "diff", "--quiet", "HEAD", "--", ".", ":!bench/results"],
            capture_output=True,
            check=False,
            timeout=10,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} with uncommitted changes" if dirty == 1 else head


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def describe_environment(pinning: Pinning, litellm_python: Path | None) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load_average(),
        "pinning": pinning.note,
        "client_cpu": pinning.client_cpu,
        "server_cpu": pinning.server_cpu,
        "versions": {
            **{p: _version(p) for p in PACKAGES},
            "litellm": LITELLM_VERSION if litellm_python is not None else "not measured",
        },
    }
