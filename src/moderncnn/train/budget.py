"""``--time-budget``: as many steps as fit a whole run into a time budget, with the schedule complete.

Before the first step the run measures itself on this device: its own model's steps on its own training
batches (on a copy of the model, with the random state forked, so that the run trains exactly as it would
without the measurement), the test pass (timed on training images: only the test set's size is used, never
its images or labels), one checkpoint and one drawing of the curves, written to a temporary directory. With
what is already spent (start-up, data; counted from the process's start on the command line, from the call
to ``fit`` in a library), :func:`steps_that_fit` chooses the number of steps: whole epochs and a last one
cut short, so that no second of the budget is left to a whole epoch that does not fit. The lr schedule is
then built for exactly those steps, so the run ends its schedule rather than being cut off. A budget run
tests once, after its last step: the test passes of the epochs before would spend the budget's time on
figures no choice depends on. Nothing read during training changes the choice.
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

__all__ = ["BudgetFit", "BudgetTooSmall", "Measured", "steps_that_fit", "run_seconds", "process_start", "measure",
           "MARGIN"]

#: The share of the budget kept in hand for what the measurement misses: on the 2-core Xeon a run's steps
#: took 0.90-1.11x the measured step (mean 1.03, 15 runs of 15-60 s; the machine's speed drifts), and with 6%
#: 4 of 15 commands ended over their budget. The timed steps follow WARMUP_STEPS untimed ones (oneDNN picks
#: its kernels there).
MARGIN = 0.10
WARMUP_STEPS = 3
#: The steps are timed for at least this many, and at least TIMED_SHARE of the budget: six steps misjudged a
#: 300 s run's by -30% to +20% (docs/notes.md).
TIMED_STEPS = 6
TIMED_SHARE = 0.01
#: Seconds from the last epoch's end to the process's exit (run.json, the closing lines; the command line
#: skips the interpreter's teardown, about a second with torch._dynamo loaded: cli.main).
FINISH_SECONDS = 0.3


class BudgetTooSmall(ValueError):
    """Not even one epoch fits: says the smallest budget that does."""


@dataclass(frozen=True)
class Measured:
    """Seconds of one training step (a full batch), one test pass, one commit and one drawing of the curves."""

    step: float
    test: float
    commit: float
    curves: float


@dataclass(frozen=True)
class BudgetFit:
    """What :func:`~moderncnn.train.fit` chose for ``time_budget``, and from what (recorded in run.json)."""

    budget: float
    spent: float  # seconds gone before the first step: start-up, data, model, this measurement
    step_seconds: float  # one training step of a full batch
    steps_per_epoch: int
    test_seconds: float  # one test pass
    commit_seconds: float  # one checkpoint and metrics written
    curves_seconds: float  # one drawing of the curves
    steps: int  # in all: whole epochs, the last one cut short where it does not fit whole

    @property
    def epochs(self) -> int:
        return -(-self.steps // self.steps_per_epoch)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "epochs": self.epochs, "margin": MARGIN, "tests": "after the last step only"}

    def line(self, where: str) -> str:
        whole, cut = divmod(self.steps, self.steps_per_epoch)
        epochs = f"{whole + cut / self.steps_per_epoch:.1f} epochs" if cut else \
            f"{whole} epoch{'s' if whole != 1 else ''}"
        return (f"about {epochs} ({self.steps:,} steps of {self.step_seconds * 1000:.0f} ms) fit in "
                f"{self.budget:g} s on this {where}, tested once at the end ({self.spent:.1f} s spent before the "
                f"first step)")


def run_seconds(steps: int, steps_per_epoch: int, m: Measured, tests: int = 1) -> float:
    """A run of ``steps`` from its first step to its last commit: the steps, a commit and a drawing of the
    curves an epoch, ``tests`` test passes (a budget run's one; else one an epoch)."""
    epochs = -(-steps // steps_per_epoch)
    return steps * m.step + epochs * (m.commit + m.curves) + tests * m.test


def steps_that_fit(budget: float, spent: float, steps_per_epoch: int, measured: Measured,
                   finish: float = FINISH_SECONDS, margin: float = MARGIN) -> int:
    """The most steps (at least one whole epoch of ``steps_per_epoch``) whose run ends within ``budget``
    seconds, ``spent`` of them gone already and ``finish`` needed after the last commit, ``margin`` of the
    budget kept in hand. Raises :class:`BudgetTooSmall` (a ValueError) naming the smallest budget that fits
    one epoch."""
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"the time budget must be a number of seconds > 0, got {budget}")
    left = budget * (1 - margin) - spent - finish
    one_epoch = run_seconds(steps_per_epoch, steps_per_epoch, measured)
    if one_epoch > left:
        smallest = math.ceil((spent + finish + one_epoch) / (1 - margin))
        raise BudgetTooSmall(f"a time budget of {budget:g} s fits no epoch here ({spent:.1f} s go before the first "
                             f"step, and one epoch with its test takes {one_epoch:.1f} s): give at least "
                             f"--time-budget {smallest}, or train on fewer images (--subset)")
    low, high = steps_per_epoch, steps_per_epoch  # run_seconds grows with steps: find the last that fits
    while run_seconds(high * 2, steps_per_epoch, measured) <= left:
        high *= 2
    low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if run_seconds(mid, steps_per_epoch, measured) <= left else (low, mid)
    return low


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


def measure(loop: Any, recipe: Recipe, device: torch.device, test_size: int, budget: float,
            writes: bool = True) -> Measured:
    """One full training step (its batch made by the loader, as in the run), one test pass of ``test_size``
    images, one commit and one drawing of the curves (``writes=False``: not timed, 0), measured on a copy of
    ``loop``'s model and its first training batches; the run's model, loader position and random state are
    untouched."""
    from .step import build_loss, build_optimizer, make_train_step

    loader = loop.train_loader
    model = copy.deepcopy(loop.model)
    optimizer = build_optimizer(model, recipe, device)
    step = make_train_step(model, optimizer, build_loss(recipe), amp_dtype=loop.plan.amp)
    epoch = loader.epoch
    seconds = TIMED_SHARE * budget
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), loop.plan.applied(model):
            model.train()
            step_seconds, full = _timed(loader, lambda x, y: step(x, y), device, seconds)
            model.eval()
            with torch.no_grad():
                forward, _ = _timed(loader, lambda x, y: _test_forward(model, x, loop, device), device, 0.0)
    finally:
        loader.set_epoch(epoch)
    test_seconds = forward * math.ceil(test_size / full) * (2 if loop.test_flip else 1)
    return Measured(step_seconds, test_seconds, *(_commit_seconds(model, optimizer) if writes else (0.0, 0.0)))


def _timed(loader: Any, fn: Any, device: torch.device, seconds: float) -> tuple[float, int]:
    """Mean seconds of making a batch and calling ``fn`` on it, over at least TIMED_STEPS full batches and
    ``seconds``, after WARMUP_STEPS untimed ones (a small data set's batches come round again), and the full
    batch's size."""
    full, done, timed = 0, 0, 0.0
    while done < WARMUP_STEPS + TIMED_STEPS or timed < seconds:
        t0 = time.perf_counter()
        for x, y in loader:
            full = full or y.shape[0]  # the first batch is a full one, or the whole data set
            if y.shape[0] == full:
                fn(x, y)
                _sync(device)
                timed += time.perf_counter() - t0 if done >= WARMUP_STEPS else 0.0
                done += 1
                if done >= WARMUP_STEPS + TIMED_STEPS and timed >= seconds:
                    break
            t0 = time.perf_counter()
    return timed / (done - WARMUP_STEPS), full


def _test_forward(model: torch.nn.Module, x: torch.Tensor, loop: Any, device: torch.device) -> torch.Tensor:
    from ..evaluate import autocast

    with autocast(device, loop.plan.amp):
        return model(x).argmax(1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _commit_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """One epoch's writes, timed in a temporary run directory: weights, training state and metrics; then one
    drawing of the curves. The second of two: the first pays once for what the run then has loaded
    (matplotlib: about a second)."""
    from ..curves import plot_curves
    from ..rundir import RunDir

    record = {"epoch": 1, "loss": 1.0, "train_acc": 0.5, "test_acc": 0.5, "points": [[0.5, 1.0, 0.5]]}
    state = {"optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}}
    with tempfile.TemporaryDirectory(prefix="moderncnn-budget-") as tmp:
        run = RunDir(tmp)
        for epoch in (1, 2):
            t0 = time.perf_counter()
            run.commit(epoch, model, state, [record] * epoch, {"model": "budget"}, curves=False)
            t1 = time.perf_counter()
            plot_curves([record] * epoch, run.curves)
        return t1 - t0, time.perf_counter() - t1
