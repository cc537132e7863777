"""Variants of one train step timed in turns in one process, so that this machine's drift (up to 2x from one
minute to the next) hits every variant alike."""

from __future__ import annotations

import time
from typing import Callable


def round_robin(step: Callable, x, y, variants: dict[str, Callable[[], Callable[[], None]]], rounds: int,
                steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds a step for each variant, one figure per round. ``variants`` maps a name to a function that
    switches the model to that variant and returns the function that switches it back."""

    def run(variant: str, n: int) -> float:
        undo = variants[variant]()
        try:
            t = time.perf_counter()
            for _ in range(n):
                step(x, y)
            return (time.perf_counter() - t) / n * 1e3
        finally:
            undo()

    for variant in variants:  # compiled, each variant's first steps compile its graph
        run(variant, warmup)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            times[variant].append(run(variant, steps))
    return times


def book_model_and_batch(name: str, compiled: bool = False):
    """``name``'s model for its book recipe as the trainer sets it up on the CPU (init, channels_last as
    ``default_speed`` picks it), and a batch of random grey images at the recipe's size: (recipe, model, speed,
    x, y)."""
    import torch

    from moderncnn import create_model
    from moderncnn.recipes import get_recipe
    from moderncnn.train import default_speed, init_weights

    recipe = get_recipe(name, "book")
    torch.manual_seed(0)
    model = init_weights(create_model(name, num_classes=10, in_channels=1, **recipe.model_kwargs))
    speed = default_speed(torch.device("cpu"), model, compiled=compiled)
    size = recipe.resize or 28
    x = torch.rand(recipe.batch_size, 1, size, size)
    if speed["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return recipe, model, speed, x, torch.randint(0, 10, (recipe.batch_size,))


def round_robin_steps(steps: dict[str, Callable], x, y, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Milliseconds a step for each of several train steps (already warmed up), one figure per round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(per_round):
                step(x, y)
            times[name].append((time.perf_counter() - t) / per_round * 1e3)
    return times


def print_quartiles(prefix: str, times: dict[str, list[float]]) -> None:
    for name, ts in times.items():
        ts = sorted(ts)
        print(f"{prefix} {name}: first quartile {ts[len(ts) // 4]:.2f} ms, median {ts[len(ts) // 2]:.2f} ms")


def add_no_amp(p) -> None:
    """``--no-amp`` on an ``argparse`` parser: fp32 where the step would otherwise use bf16 autocast."""
    p.add_argument("--no-amp", action="store_true",
                   help="fp32 (default: bf16 autocast where this CPU has bf16 in hardware, else fp32, as the trainer "
                        "picks it; emulated bf16 would be several times slower than fp32 and measure nothing useful)")


def cpu_amp_dtype(no_amp: bool = False):
    """The CPU train step's autocast dtype as the trainer picks it (bf16 where the CPU has it in hardware, else
    None: fp32), or None with ``no_amp``."""
    import torch

    from moderncnn.train import default_speed

    return None if no_amp else default_speed(torch.device("cpu"))["amp_dtype"]


def precision_name(amp_dtype) -> str:
    return "bf16" if amp_dtype is not None else "fp32"
