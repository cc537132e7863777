"""``--dry-run``: what a run would do and how long it would take, from a few real steps, writing nothing.

The run is resolved as :func:`~moderncnn.train.fit` resolves it (recipe, data, model, speed plan), then a
few training steps and test batches of the real model and batch are timed on the device and extrapolated to
the whole run, test passes included. The random state is forked, so the caller's draws are unchanged; no run
directory is named and no data set is downloaded, so no file is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoint import pretrained_parameters
from ..data import ImageDataset
from ..distributed import world_from_env
from ..evaluate import select_device
from ..recipes import Recipe
from .loop import Loop, prepare_loop
from .normalization import input_normalization
from .options import TrainOptions
from .progress import format_duration, long_run_hint
from .speed import SpeedPlan, plan_speed
from .threads import using_threads
from .trainer import _load_data, _prepare_model

__all__ = ["DryRun", "dry_run", "time_steps"]

#: Steps run before the timing starts (allocations, oneDNN's kernel choice), and steps timed.
WARMUP_STEPS, TIMED_STEPS = 2, 5


@dataclass
class DryRun:
    """A run resolved but not started: its recipe, data, speed plan and estimated time."""

    recipe: Recipe
    data: dict[str, Any]
    plan: SpeedPlan
    device: torch.device
    threads: int
    seconds_per_step: float
    seconds_per_test_batch: float
    steps_per_epoch: int
    test_batches: int
    timed_steps: int

    @property
    def seconds(self) -> float:
        """The whole run: every epoch's training steps and test pass."""
        epoch = self.steps_per_epoch * self.seconds_per_step + self.test_batches * self.seconds_per_test_batch
        return self.recipe.epochs * epoch

    def __str__(self) -> str:
        r, d = self.recipe, self.data
        values = ", ".join(f"{k} {v}" for k, v in r.as_dict().items() if k not in ("model", "name", "based_on"))
        lines = [f"dry run: {r.model} with the {r.name} recipe ({r.based_on}); nothing trained, nothing written",
                 f"recipe: {values}",
                 (f"data: {d['name']} from {d['source']}: train {d['train_size']:,} images (using "
                  f"{d['train_used']:,}), test {d['test_size']:,} (using {d['test_used']:,}), {d['size']}x{d['size']} "
                  f"pixels"),
                 f"speed: {self.plan.precision} on {self.device} ({self.threads} CPU thread"
                 f"{'s' * (self.threads != 1)})"]
        lines += [f"  {k}: {v}" for k, v in self.plan.why.items()]
        if self.plan.compile is not None:
            lines.append("  (torch.compile is not timed: the estimate is of eager steps, compilation not counted)")
        lines.append(f"estimate: {self.seconds_per_step * 1e3:.1f} ms a step of {r.batch_size} ({self.timed_steps} "
                     f"timed), {self.steps_per_epoch:,} steps and {self.test_batches:,} test batches an epoch, "
                     f"{r.epochs} epochs: about {format_duration(self.seconds)} in all")
        hint = long_run_hint(self.seconds, self.device.type)
        return "\n".join(lines + ([hint] if hint else []))


def dry_run(model: torch.nn.Module | str, recipe: str | Recipe = "book", device: str | torch.device | None = None,
            *, seed: int = 0, data_dir: Any = None, train_data: ImageDataset | None = None,
            test_data: ImageDataset | None = None, amp: bool | None = None, channels_last: bool | None = None,
            cuda_graph: bool | None = None, speed: dict[str, Any] | None = None, compile: bool | str = False,
            init_from: Any = None, threads: int | None = None, **overrides: Any) -> DryRun:
    """What ``fit`` with the same arguments would train, and an estimate of its time (see the module)."""
    speed = {"amp": amp, "channels_last": channels_last, "cuda_graph": cuda_graph, **(speed or {})}
    options = TrainOptions(model=model, recipe=recipe, device=device, seed=seed, data_dir=data_dir,
                           train_data=train_data, test_data=test_data, download=False,
                           speed={k: v for k, v in speed.items() if v is not None}, compile=compile,
                           init_from=init_from, overrides=overrides, threads=threads)
    world = world_from_env()
    if world.distributed:
        raise ValueError("--dry-run estimates one process: run it without torchrun")
    device = select_device(options.device)
    forked = [device] if device.type == "cuda" else []
    with using_threads(options.threads) as n, torch.random.fork_rng(devices=forked):
        recipe = options.base_recipe()
        train, test = _load_data(options, recipe, world, None)
        net, recipe, started = _prepare_model(options, recipe, train, resuming=False)
        normalize = input_normalization(recipe, train.images)
        plan = plan_speed(device, net, image_size=recipe.resize or train.images.shape[-1], processes=1,
                          compile=options.compile_mode, schedule=recipe.schedule, overrides=options.speed)
        eager = dataclasses.replace(plan, compile=None)  # compiling would take longer than the estimate
        loop = prepare_loop(net, recipe, train, test, normalize, eager, device, world, seed,
                            pretrained_parameters(net, started))
        with plan.applied(loop.model):
            step, test_batch, timed = time_steps(loop, device)
    data = {"name": train.name, "source": train.source, "train_size": len(train), "test_size": len(test),
            "train_used": loop.train_loader.num_examples, "test_used": loop.test_loader.num_examples,
            "size": recipe.resize or train.images.shape[-1]}
    return DryRun(recipe, data, plan, device, n, step, test_batch, len(loop.train_loader), len(loop.test_loader),
                  timed)


def time_steps(loop: Loop, device: torch.device, warmup: int = WARMUP_STEPS,
               timed: int = TIMED_STEPS) -> tuple[float, float, int]:
    """Seconds per training step and per test batch, after ``warmup`` untimed steps; and the steps timed
    (fewer than ``timed`` when an epoch is shorter). The model is trained by these steps: use a copy."""
    loop.train_loader.set_epoch(0)
    loop.model.train()
    times = []
    for i, (x, y) in enumerate(loop.train_loader):
        if i >= warmup + timed:
            break
        t = time.perf_counter()
        loss, _ = loop.step(x, y)
        float(loss)  # the step has finished on any device
        times.append(time.perf_counter() - t)
    timed_times = times[warmup:] or times[-1:]
    loop.model.eval()
    test_times = []
    autocast = torch.autocast(device.type, loop.plan.amp) if loop.plan.amp else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for i, (x, _) in enumerate(loop.test_loader):
            if i >= 1 + timed:
                break
            t = time.perf_counter()
            float(loop.model(x).sum())
            test_times.append(time.perf_counter() - t)
    test_timed = test_times[1:] or test_times
    return (sum(timed_times) / len(timed_times), sum(test_timed) / max(len(test_timed), 1), len(timed_times))
