"""What a study row was computed with: library versions, the marginface commit, the device, the threads.

An independent re-run of the tiny28 study got a different CFP-FF for the same seed on another install (78.73 vs
80.63) and could not say why: the CSV recorded nothing about the software. :func:`describe` is what each row now
records. ``python -m marginface.training.environment [DEVICE]`` prints it as JSON; the study runs that in a child
process with its runs' own environment variables (threads), so the row says what the runs saw, not the parent.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

#: results.csv columns that describe the environment (after the per-set columns; empty in rows written before
#: the environment was recorded)
FIELDS = ["torch_version", "numpy_version", "python_version", "marginface_commit", "marginface_dirty", "device",
          "torch_threads"]


def git_commit(where: Path | None = None) -> tuple[str, str]:
    """(commit hash, 'yes'/'no' for uncommitted changes to tracked files) of the checkout holding ``where``
    (default: this package's source); ('unknown', '') when it is not a git checkout (an installed wheel) or git is
    missing. Untracked files (run folders, caches) do not make a checkout dirty: they cannot change the code."""
    folder = str(where or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30, check=False)
        if head.returncode != 0:
            return "unknown", ""
        diff = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", ""
    return head.stdout.strip(), ("yes" if diff.stdout.strip() else "no") if diff.returncode == 0 else ""


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: str) -> str:
    """``device`` (as a config gives it: 'cpu', 'cuda', 'cuda:1', 'mps') with its hardware: 'cpu (<model>)',
    'cuda:1 (<GPU name>)'."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device == "cpu":
        return f"cpu ({cpu_model()})"
    return device


def describe(device: str = "cpu") -> dict[str, str]:
    """The environment of this process for a run on ``device``: one string per :data:`FIELDS` entry."""
    import numpy
    import torch

    commit, dirty = git_commit()
    return {"torch_version": torch.__version__, "numpy_version": numpy.__version__,
            "python_version": platform.python_version(), "marginface_commit": commit, "marginface_dirty": dirty,
            "device": device_name(device), "torch_threads": str(torch.get_num_threads())}


def describe_in_child(devices: list[str], env: dict[str, str]) -> dict[str, dict[str, str]]:
    """:func:`describe` for each device, computed once in a child process run with ``env`` (the study's runs'
    environment variables, e.g. ``OMP_NUM_THREADS``) by the same interpreter the runs use."""
    out = subprocess.run([sys.executable, "-m", "marginface.training.environment", *devices], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    if out.returncode != 0:
        raise OSError(f"describing the environment failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


if __name__ == "__main__":
    print(json.dumps({device: describe(device) for device in (sys.argv[1:] or ["cpu"])}))
