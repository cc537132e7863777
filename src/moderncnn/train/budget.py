"""``--time-budget``: as many epochs as fit a whole run into a time budget, with the schedule complete.

Before the first step the run measures itself on this device: a few steps of its own model on its own
training batches (on a copy of the model, with the random state forked, so that the run trains exactly as it
would without the measurement), the test pass (timed on training images: only the test set's size is used,
never its images or labels), and one checkpoint written to a temporary directory. With what is already
spent (start-up, data; counted from the process's start on the command line, from the call to ``fit`` in a
library), :func:`epochs_that_fit` chooses the epochs; the lr schedule is then built for exactly that many, so
the run ends its schedule rather than being cut off. Nothing read during training changes the choice.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..recipes import Recipe

__all__ = ["BudgetFit", "BudgetTooSmall", "epochs_that_fit", "process_start", "measure_epoch", "MARGIN"]

#: The share of the budget kept in hand for what the measurement misses (steps slower than the first few,
#: a busy machine). The timed steps follow WARMUP_STEPS untimed ones (oneDNN picks its kernels there).
MARGIN = 0.06
WARMUP_STEPS = 3
TIMED_STEPS = 6
#: Seconds from the last epoch's end to the process's exit (run.json, the closing lines, the interpreter).
FINISH_SECONDS = 0.3


class BudgetTooSmall(ValueError):
    """Not even one epoch fits: says the smallest budget that does."""


@dataclass(frozen=True)
class BudgetFit:
    """What :func:`~moderncnn.train.fit` chose for ``time_budget``, and from what (recorded in run.json)."""

    budget: float
    spent: float  # seconds gone before the first step: start-up, data, model, this measurement
    step_seconds: float  # one training step of a full batch
    steps_per_epoch: int
    test_seconds: float  # one test pass
    commit_seconds: float  # one checkpoint, metrics and curves written
    epochs: int

    @property
    def epoch_seconds(self) -> float:
        return epoch_seconds(self.step_seconds, self.steps_per_epoch, self.test_seconds, self.commit_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "epoch_seconds": round(self.epoch_seconds, 4), "margin": MARGIN}

    def line(self, where: str) -> str:
        return (f"about {self.epochs} epoch{'s' if self.epochs != 1 else ''} fit in {self.budget:g} s on this "
                f"{where} ({self.epoch_seconds:.1f} s an epoch with its test; {self.spent:.1f} s spent before "
                f"the first step)")


def epoch_seconds(step_seconds: float, steps_per_epoch: int, test_seconds: float, commit_seconds: float) -> float:
    return step_seconds * steps_per_epoch + test_seconds + commit_seconds


def epochs_that_fit(budget: float, spent: float, epoch: float, finish: float = FINISH_SECONDS,
                    margin: float = MARGIN) -> int:
    """The most whole epochs of ``epoch`` seconds that end a run within ``budget`` seconds, ``spent`` of them
    gone already and ``finish`` needed after the last epoch, ``margin`` of the budget kept in hand.
    Raises :class:`BudgetTooSmall` (a ValueError) naming the smallest budget that fits one epoch."""
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"the time budget must be a number of seconds > 0, got {budget}")
    left = budget * (1 - margin) - spent - finish
    epochs = math.floor(left / epoch) if epoch > 0 else 0
    if epochs < 1:
        smallest = math.ceil((spent + finish + epoch) / (1 - margin))
        raise BudgetTooSmall(f"a time budget of {budget:g} s fits no epoch here ({spent:.1f} s go before the first "
                             f"step, and one epoch with its test takes {epoch:.1f} s): give at least "
                             f"--time-budget {smallest}, or train on fewer images (--subset)")
    return epochs


def process_start() -> float:
    """When this process started, in :func:`time.time` seconds (Linux: from /proc; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def measure_epoch(loop: Any, recipe: Recipe, device: torch.device, test_size: int) -> tuple[float, float, float]:
    """Seconds of one full training step (its batch made by the loader, as in the run), one test pass of
    ``test_size`` images and one commit, measured on a copy of ``loop``'s model and its first training
    batches; the run's model, loader position and random state are untouched."""
    from .step import build_loss, build_optimizer, make_train_step

    loader = loop.train_loader
    model = copy.deepcopy(loop.model)
    optimizer = build_optimizer(model, recipe, device)
    step = make_train_step(model, optimizer, build_loss(recipe), amp_dtype=loop.plan.amp)
    epoch = loader.epoch
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), loop.plan.applied(model):
            model.train()
            step_seconds, full = _timed(loader, lambda x, y: step(x, y), device)
            model.eval()
            with torch.no_grad():
                forward, _ = _timed(loader, lambda x, y: _test_forward(model, x, loop, device), device)
    finally:
        loader.set_epoch(epoch)
    test_seconds = forward * math.ceil(test_size / full) * (2 if loop.test_flip else 1)
    return step_seconds, test_seconds, _commit_seconds(model, optimizer)


def _timed(loader: Any, fn: Any, device: torch.device) -> tuple[float, int]:
    """Mean seconds of making a batch and calling ``fn`` on it, over TIMED_STEPS full batches after
    WARMUP_STEPS untimed ones (a small data set's batches come round again), and the full batch's size."""
    full, done, seconds = 0, 0, 0.0
    while done < WARMUP_STEPS + TIMED_STEPS:
        t0 = time.perf_counter()
        for x, y in loader:
            full = full or y.shape[0]  # the first batch is a full one, or the whole data set
            if y.shape[0] == full:
                fn(x, y)
                _sync(device)
                seconds += time.perf_counter() - t0 if done >= WARMUP_STEPS else 0.0
                done += 1
                if done == WARMUP_STEPS + TIMED_STEPS:
                    break
            t0 = time.perf_counter()
    return seconds / TIMED_STEPS, full


def _test_forward(model: torch.nn.Module, x: torch.Tensor, loop: Any, device: torch.device) -> torch.Tensor:
    from ..evaluate import autocast

    with autocast(device, loop.plan.amp):
        return model(x).argmax(1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _commit_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """One epoch's writes, timed in a temporary run directory: weights, training state, metrics, curves. The
    second of two: the first pays once for what the run then has loaded (matplotlib: about a second)."""
    from ..rundir import RunDir

    record = {"epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.5, "points": [[0.5, 1.0, 0.5]]}
    state = {"optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    with tempfile.TemporaryDirectory(prefix="moderncnn-budget-") as tmp:
        run = RunDir(tmp)
        for epoch in (1, 2):
            t0 = time.perf_counter()
            run.commit(epoch, model, state, [record] * epoch, {"model": "budget"})
        return time.perf_counter() - t0
