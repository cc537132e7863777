"""``--dry-run``: what a run would do and how long it would take, from a few real steps, writing nothing.

The run is resolved as :func:`~moderncnn.train.fit` resolves it (recipe, data, model, speed plan), then its
training steps and test batches are timed on the device as ``--time-budget`` times them
(:func:`~moderncnn.train.budget.measure`, on a copy of the model) and extrapolated to the whole run, a test
pass an epoch included, checkpoints not. The random state is forked, so the caller's draws are unchanged; no
run directory is named and no data set is downloaded, so no file is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..checkpoint import pretrained_parameters
from ..data import ImageDataset
from ..distributed import world_from_env
from ..evaluate import select_device
from ..recipes import Recipe
from .budget import Measured, measure, run_seconds
from .loop import prepare_loop
from .normalization import input_normalization
from .options import TrainOptions
from .progress import format_duration, long_run_hint
from .speed import SpeedPlan, plan_speed
from .threads import using_threads
from .trainer import _load_data, _prepare_model

__all__ = ["DryRun", "dry_run"]


@dataclass
class DryRun:
    """A run resolved but not started: its recipe, data, speed plan and estimated time."""

    recipe: Recipe
    data: dict[str, Any]
    plan: SpeedPlan
    device: torch.device
    threads: int
    measured: Measured
    steps_per_epoch: int
    test_batches: int

    @property
    def seconds(self) -> float:
        """The whole run: every epoch's training steps and test pass (checkpoints not timed)."""
        epochs = self.recipe.epochs
        return run_seconds(epochs * self.steps_per_epoch, self.steps_per_epoch, self.measured, tests=epochs)

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
        lines.append(f"estimate: {self.measured.step * 1e3:.1f} ms a step of {r.batch_size}, "
                     f"{self.steps_per_epoch:,} steps and a test pass of {self.test_batches:,} batches "
                     f"({self.measured.test:.1f} s) an epoch, {r.epochs} epochs: about "
                     f"{format_duration(self.seconds)} in all (checkpoints not timed)")
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
                            pretrained=pretrained_parameters(net, started))
        measured = measure(loop, recipe, device, loop.test_loader.num_examples, budget=0.0, writes=False)
    data = {"name": train.name, "source": train.source, "train_size": len(train), "test_size": len(test),
            "train_used": loop.train_loader.num_examples, "test_used": loop.test_loader.num_examples,
            "size": recipe.resize or train.images.shape[-1]}
    return DryRun(recipe, data, plan, device, n, measured, len(loop.train_loader), len(loop.test_loader))
