"""The training loop: data on the device, the step as the speed plan builds it, one epoch, the test pass.

Loss and accuracy are summed on the device and read only at the curves' five points an epoch, so the step
never waits for the host; whether the loss is still finite is read every step on a CPU (where the step has
finished anyway) and every :data:`CHECK_EVERY` steps elsewhere, so a run that diverges stops within a few
steps.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..cudagraph import TrainStep
from ..data import DeviceLoader, ImageDataset
from ..distributed import World, all_sum, broadcast_buffers
from ..evaluate import evaluate
from ..recipes import Recipe
from .progress import Ticker
from .speed import SpeedPlan, compiled
from .step import build_loss, build_optimizer, build_scheduler, by_batch_size, make_train_step

__all__ = ["Loop", "Diverged", "prepare_loop", "train_epoch", "rng_state", "set_rng_state", "CHECK_EVERY"]

#: Steps between two reads of the loss on a GPU (one host sync each).
CHECK_EVERY = 25
#: Points per epoch on the curves, as the book's animator draws them (two host syncs each).
POINTS_PER_EPOCH = 5
#: A mean loss this many times a uniform guess's (ln classes) has exploded, finite or not: no run that learns
#: gets there (the first steps of a fresh net sit near 1x), and one that does ends at chance (the modern
#: recipe at lr 1e4: loss 4.8e8, test acc 0.100).
EXPLODED = 10
#: Steps a running mean must span before it is checked within an epoch (the epoch's mean always is).
EXPLODED_AFTER = 10


class Diverged(ValueError):
    """The loss became NaN or infinite, or exploded (:data:`EXPLODED`): the run must stop."""

    def __init__(self, epoch: int, step: int, value: float, advice: str = "", limit: float | None = None):
        what = f"became {value}" if limit is None else f"exploded to {value:.3g} (over {limit:.3g}, {EXPLODED}x a " \
                                                         f"uniform guess's)"
        super().__init__(f"the loss {what} in epoch {epoch}, step {step}" + (f"; {advice}" if advice else ""))
        self.epoch, self.step, self.value, self.limit = epoch, step, value, limit


@dataclass
class Loop:
    """What trains: the model (``net``: it, or its DistributedDataParallel wrapper), the loaders, the
    optimizer and schedule, and the step as the plan builds it."""

    model: nn.Module
    net: nn.Module
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: TrainStep
    graphed: Any
    plan: SpeedPlan
    classes: list[str]
    test_flip: bool = False
    told_cost: bool = False  # the run's long-run line (progress.Ticker) said or judged unneeded
    #: The run's steps in all, where its last epoch is cut short (a time budget's); None: whole epochs.
    steps: int | None = None

    def epoch_steps(self, epoch: int) -> int:
        """Steps of epoch ``epoch`` (from 0): the loader's, or what is left of the run's ``steps``."""
        whole = len(self.train_loader)
        return whole if self.steps is None else max(0, min(whole, self.steps - epoch * whole))


def prepare_loop(model: nn.Module, recipe: Recipe, train: ImageDataset, test: ImageDataset, normalize: Any,
                 plan: SpeedPlan, device: torch.device, world: World, seed: int, steps: int | None = None,
                 pretrained: frozenset[str] = frozenset()) -> Loop:
    """The data sets on the device as loaders, the model in its memory format, and the step to call.
    ``steps``: the run's steps in all, its last epoch cut short (the lr schedule spans exactly those).
    ``pretrained``: the parameters ``--init-from`` loaded, for their own lr (:func:`.step.build_optimizer`)."""
    norm = (normalize[0], normalize[1]) if normalize else None
    shard = (world.rank, world.size)
    train_loader = DeviceLoader(train, recipe.batch_size, device=device, shuffle=True, resize=recipe.resize,
                                augment=recipe.augment, normalize=norm, channels_last=plan.channels_last,
                                subset=recipe.subset, seed=seed, shard=shard, equal_steps=True,
                                crop_padding=recipe.crop_padding)
    test_loader = DeviceLoader(test, recipe.batch_size, device=device, resize=recipe.resize, normalize=norm,
                               channels_last=plan.channels_last, subset=recipe.test_subset, shard=shard)
    model.to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe, device, pretrained)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader), steps)
    net = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    loss_fn = build_loss(recipe)
    full = train_loader.share(recipe.batch_size)  # this process's examples of a full batch
    graph_size = full if plan.cuda_graph else None
    step = graphed = make_train_step(net, optimizer, loss_fn, amp_dtype=plan.amp, scheduler=scheduler,
                                     cuda_graph=None if plan.compile else graph_size)
    if plan.compile is not None:
        # one graph, for the full batch: the epoch's last, smaller batch runs eagerly, because a second graph
        # for it costs 10-20 s of compilation on the CPU to save milliseconds. On CUDA the compiled step is
        # replayed as one CUDA graph too, the optimizer's update included.
        graphed = make_train_step(compiled(net, plan.compile, device), optimizer, loss_fn, amp_dtype=plan.amp,
                                  scheduler=scheduler, cuda_graph=graph_size)
        step = by_batch_size(full, graphed, step)
    return Loop(model, net, train_loader, test_loader, optimizer, scheduler, step, graphed, plan,
                list(train.classes), recipe.test_flip, steps=steps)


def train_epoch(loop: Loop, world: World, device: torch.device, epoch: int, epochs: int, *, warmup: bool,
                quiet: bool, on_point: Callable[[dict[str, Any]], None] | None = None,
                test: bool = True) -> dict[str, Any]:
    """One epoch: train (timed, one sync at the end), then test accuracy (not timed; ``test=False``: none, its
    ``test_acc`` None). Returns its record. The epoch is cut short where the run's ``steps`` end.

    ``on_point`` is called at each of the epoch's :data:`POINTS_PER_EPOCH` points with the epoch's record so
    far (``epoch``, ``epochs`` and ``points``; no test accuracy yet), as the book's animator is: a live plot
    redraws there. Its time is left out of the epoch's timing.

    ``warmup`` marks the first epoch of a compiled model: its time includes compilation, so the run's
    examples/sec leaves it out when there are other epochs. Under torchrun the sums and counts are over
    every process, and every process tests its share of the test set with rank 0's batch norm statistics.
    Raises :class:`Diverged` as soon as the loss is seen to be non-finite.
    """
    from tqdm import tqdm  # the terminal bar: only on a tty (tqdm.auto warns in a notebook without ipywidgets)

    loop.train_loader.set_epoch(epoch)
    loop.model.train()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    check_every = 1 if device.type == "cpu" and not world.distributed else CHECK_EVERY
    steps = loop.epoch_steps(epoch)
    batches = loop.train_loader if steps == len(loop.train_loader) else itertools.islice(loop.train_loader, steps)
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
               leave=False, disable=quiet or not sys.stderr.isatty())
    ticker = Ticker(epoch, epochs, steps, loop.train_loader.batch_size, device.type, log=not quiet and bar.disable,
                    estimate=not quiet and not loop.told_cost)
    marks = {steps * k // POINTS_PER_EPOCH for k in range(1, POINTS_PER_EPOCH + 1)}
    points = []  # the running train loss and accuracy within the epoch (this process's, under torchrun)
    paused = 0.0  # seconds spent in on_point, not training
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(bar, 1):
        batch_loss, batch_correct = loop.step(x, y)
        loss_sum += batch_loss
        correct += batch_correct
        seen += y.shape[0]
        ticker.step(i)
        if i % check_every == 0:
            _check_finite(world, loss_sum, epoch + 1, i)
        if i in marks:
            points.append([epoch + i / len(loop.train_loader), loss_sum.item() / seen, correct.item() / seen])
            # a mean over a few batches can spike (a tiny data set's first point is one batch); one rank alone
            # must not stop: the epoch's end checks the mean over every step and rank
            if i >= EXPLODED_AFTER and not world.distributed:
                _check_not_exploded(points[-1][1], len(loop.classes), epoch + 1, i)
            if on_point is not None:
                t = time.perf_counter()
                on_point({"epoch": epoch + 1, "epochs": epochs, "points": list(points)})
                paused += time.perf_counter() - t
    loop.told_cost |= ticker.told
    if world.distributed:
        loss_sum, correct, total = all_sum(world, loss_sum, correct, torch.tensor(seen, device=device))
        seen = int(total)
    _check_finite(world, loss_sum, epoch + 1, steps)
    if seen:
        _check_not_exploded(loss_sum.item() / seen, len(loop.classes), epoch + 1, steps)
    train_seconds = time.perf_counter() - t0 - paused
    if seen == 0:
        raise ValueError("the training set is empty: check --subset and the data directory")
    test_acc = test_accuracy(loop, world, device) if test else None
    record = {"epoch": epoch + 1, "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
              "test_acc": test_acc, "examples_per_sec": seen / train_seconds, "train_seconds": train_seconds,
              "examples": seen, "warmup": warmup, "wall_seconds": time.perf_counter() - t0, "points": points}
    if loop.scheduler is not None:
        record["lr"] = max(loop.scheduler.get_last_lr())  # the schedule's: the new layers' (pretrained ones: scaled)
    return record


def _check_finite(world: World, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    value = all_sum(world, loss_sum)[0] if world.distributed else loss_sum
    if not torch.isfinite(value):
        raise Diverged(epoch, step, float(value))


def _check_not_exploded(mean_loss: float, classes: int, epoch: int, step: int) -> None:
    limit = EXPLODED * math.log(max(classes, 2))
    if mean_loss > limit:
        raise Diverged(epoch, step, mean_loss, limit=limit)


def test_accuracy(loop: Loop, world: World, device: torch.device) -> float:
    """Accuracy on the test set, eagerly (compiled, the test pass would add two more graphs' compilation)."""
    broadcast_buffers(world, loop.model)
    test = evaluate(loop.model, loop.test_loader, device, amp_dtype=loop.plan.amp, classes=loop.classes,
                    test_flip=loop.test_flip)
    if not world.distributed:
        return test["accuracy"]
    confusion = all_sum(world, test["confusion"].to(device))[0]
    return int(confusion.diag().sum()) / int(confusion.sum())


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
