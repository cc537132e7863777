"""run.json's contents: what was trained, how, on what data (with checksums), where, with which code."""

from __future__ import annotations

import contextlib
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..data import ImageDataset, provenance
from ..recipes import Recipe, as_recorded_then
from .speed import SpeedPlan

__all__ = ["run_metadata", "check_resumable", "now", "versions", "device_name", "git_commit"]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_metadata(name: str, recipe: Recipe, seed: int, train: ImageDataset, test: ImageDataset,
                 normalize: Any, device: torch.device, command: str | None, plan: SpeedPlan,
                 processes: int) -> dict[str, Any]:
    channels, native = int(train.images.shape[1]), int(train.images.shape[-1])
    return {
        "model": name,
        "model_kwargs": {"num_classes": len(train.classes), "in_channels": channels, **recipe.model_kwargs},
        "recipe": recipe.as_dict(),
        "seed": seed,
        "speed": plan.as_dict(),
        "input": {"channels": channels, "native_size": native, "size": recipe.resize or native,
                  "resize": recipe.resize, "normalize": normalize, "test_flip": recipe.test_flip},
        "data": {"name": train.name, "source": train.source, "is_sample": bool(train.is_sample),
                 "train_size": len(train), "test_size": len(test), "classes": list(train.classes),
                 "train": provenance(train), "test": provenance(test)},
        "device": str(device),
        "device_name": device_name(device),
        "processes": processes,
        "versions": versions(),
        "git": git_commit(),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "start_time": now(),
        "status": "running",
        "epochs_done": 0,
    }


# Values that may differ between a stopped run and its --resume without changing the result.
_RESUME_FREE = ("based_on",)


def check_resumable(previous: dict[str, Any], here: dict[str, Any], where: Any) -> None:
    """A one-line error unless ``here`` (this command's run.json) continues the run ``previous`` describes."""
    theirs = as_recorded_then(previous.get("recipe") if isinstance(previous.get("recipe"), dict) else {})
    ours = here["recipe"]
    done = previous.get("epochs_done")
    if isinstance(done, int) and ours["epochs"] < done:  # run.json would say "3 of 2 epochs"
        raise ValueError(f"{where} has already trained {done} epochs, more than --epochs {ours['epochs']}; a resume "
                         f"never shortens a run: leave --epochs out (or give {done} or more), or pass --overwrite, "
                         f"or choose another --out")
    free = _RESUME_FREE + (("epochs",) if ours.get("schedule") == "constant" else ())
    diffs = [(k, theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
             if k not in free and theirs.get(k) != ours.get(k)]
    diffs += [(k, previous.get(k), here[k]) for k in ("model", "model_kwargs", "seed") if previous.get(k) != here[k]]
    data = previous.get("data") if isinstance(previous.get("data"), dict) else {}
    if data.get("name") != here["data"]["name"]:
        diffs.append(("dataset", data.get("name"), here["data"]["name"]))
    if diffs:
        shown = ", ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in diffs[:4])
        raise ValueError(f"{where} holds a different run ({shown}); resume it with the same options, "
                         f"or pass --overwrite, or choose another --out")


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        vision = version("torchvision")  # without importing it: ~2 s
    except PackageNotFoundError:
        vision = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
            "moderncnn": __version__}


def git_commit() -> dict[str, Any] | None:
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return platform.processor() or platform.machine()
    return device.type
