"""The virtual environment LiteLLM's proxy runs from: the bench's own, cached outside the repo.

LiteLLM is a peer measured beside the mesh, not a dependency of it, so it lives in
`${XDG_CACHE_HOME:-~/.cache}/inference-mesh/litellm-VERSION`, installed once from the package
index with pip and reused by every later run (a stamp file marks a finished install; a lock
file keeps two benches from installing at once).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from bench.processes import BenchError

VERSION = "1.103.7"
REQUIREMENT = f"litellm[proxy]=={VERSION}"
INSTALL_TIMEOUT_S = 900.0


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-mesh"


class LiteLLMEnv:
    """Lifecycle: `ensure()` (installs when needed, then returns the interpreter to run)."""

    def __init__(self, root: Path | None = None) -> None:
        self.path = (root or cache_root()) / f"litellm-{VERSION}"
        self.python = self.path / "bin" / "python"
        self._stamp = self.path / ".installed"
        self._log = self.path.with_name(self.path.name + ".log")

    def installed(self) -> bool:
        return (
            self.python.exists()
            and self._stamp.exists()
            and self._stamp.read_text(encoding="utf-8").strip() == REQUIREMENT
        )

    def ensure(self) -> Path:
        """The venv's python, installing `litellm[proxy]` first when it is not there yet;
        BenchError with the reason (and the install log's tail) when that fails."""
        if self.installed():
            return self.python
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another bench may be installing it right now
            if not self.installed():
                self._install()
        return self.python

    def _install(self) -> None:
        steps = [
            [sys.executable, "-m", "venv", str(self.path)],
            [str(self.python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(self.python), "-m", "pip", "install", "--quiet", REQUIREMENT],
            [str(self.python), "-c", "import litellm.proxy.proxy_cli"],
        ]
        with open(self._log, "w", encoding="utf-8") as out:
            for argv in steps:
                out.write(f"$ {' '.join(argv)}\n")
                out.flush()
                try:
                    done = subprocess.run(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=INSTALL_TIMEOUT_S,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise BenchError(f"cannot install {REQUIREMENT}: {exc}") from exc
                if done.returncode != 0:
                    raise BenchError(
                        f"cannot install {REQUIREMENT} into {self.path} "
                        f"({argv[-1]!r} exited {done.returncode}); log {self._log}:\n"
                        + _tail(self._log)
                    )
        self._stamp.write_text(REQUIREMENT + "\n", encoding="utf-8")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-lines:])
    except OSError:
        return ""
