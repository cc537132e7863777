"""Results as JSON, one file per benchmark run, with what made them: commit, versions, machine, command.

Every product benchmark writes ``docs/results/<machine>/<benchmark>-<date>.json`` (or ``--json FILE``)
through :func:`write`, so a figure in the docs can always be traced to its run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max of a list of figures, and how many there are."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def cpu_flags() -> list[str]:
    """The CPU features that decide the speed policy, as /proc/cpuinfo lists them (Linux; else empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _FLAGS if f in have]
    except OSError:
        pass
    return []


def commit() -> dict[str, Any] | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        return {"commit": head, "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())} \
            if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a result was measured."""
    from moderncnn import __version__
    from moderncnn.train import device_kind
    from moderncnn.train.metadata import device_name

    return {"git": commit(), "device": str(device), "device_name": device_name(device),
            "device_kind": device_kind(device), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "moderncnn": __version__, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.date.today().isoformat()}


def machine_slug(device: torch.device) -> str:
    """A folder name for this machine: the device's name, lower-case, and the number of CPU cores."""
    from moderncnn.train.metadata import device_name

    name = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    return f"{name}-{os.cpu_count()}core" if device.type == "cpu" else name


def write(payload: dict[str, Any], benchmark: str, device: torch.device, machine: str | None = None,
          path: str | None = None) -> Path:
    """``payload`` with the environment, as ``path`` or ``docs/results/<machine>/<benchmark>-<date>.json``."""
    env = environment(device)
    target = Path(path) if path else RESULTS / (machine or machine_slug(device)) / f"{benchmark}-{env['date']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"benchmark": benchmark, **env, **payload}, indent=1) + "\n")
    print(f"results: {target}", file=sys.stderr)
    return target
