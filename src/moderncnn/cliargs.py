"""Command-line values checked before anything is built, read or allocated.

A number that parses can still be one no machine can serve: ``--resize 100000`` asks for a batch of
terabytes, ``--num-classes 10**11`` for a classifier of as many bytes. Each numeric option has a range
(:func:`whole_number`), and a training size is checked against the machine's memory from the model's own
shapes, computed on the meta device (no memory, no weights) before the run starts (:func:`check_fits`).
``num_classes`` and ``in_channels`` come from the data, never from ``--model-arg`` (:func:`check_model_args`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import torch
import torch.nn as nn

from .runschema import MAX_CLASSES, MAX_IMAGE_SIDE

__all__ = ["MAX_IMAGE_SIDE", "MAX_CLASSES", "MAX_BATCH", "whole_number", "check_model_args", "activation_bytes",
           "memory_bytes", "check_fits"]

#: The largest batch a command may ask for (the largest built-in training split has 60,000 images).
MAX_BATCH = 1 << 20
#: ``--model-arg`` names the command line sets itself, and the option or data that sets each.
RESERVED_MODEL_ARGS = {
    "num_classes": "the number of classes comes from the data set (--dataset: one sub-folder per class)",
    "in_channels": "the number of channels comes from the data set's images (--dataset)",
}


def whole_number(lo: int, hi: int, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse ``type``: an int from ``lo`` to ``hi``, else argparse's one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {what} from {lo:,} to {hi:,} (got {text!r})")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its own messages
    return parse


def check_model_args(model_kwargs: dict[str, Any]) -> None:
    """A one-line ValueError for a ``--model-arg`` the command line sets from the data."""
    for key, why in RESERVED_MODEL_ARGS.items():
        if key in model_kwargs:
            raise ValueError(f"--model-arg {key}=... cannot be set: {why}")


def activation_bytes(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Bytes of every leaf module's output for one fp32 image of ``input_size`` (C, H, W): what a training
    step keeps for the backward pass, at least. ``model`` must be on the meta device."""
    total = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    # an in-place layer (ReLU(inplace=True)) writes over its input: its output costs nothing more
    leaves = [m for m in model.modules() if next(m.children(), None) is None and not getattr(m, "inplace", False)]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total + 4 * input_size[0] * input_size[1] * input_size[2]


def memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` (a GPU's, else the machine's RAM), or None when it cannot be told."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def check_fits(name: str, model_kwargs: dict[str, Any], size: int, batch: int, device: torch.device) -> None:
    """A one-line ValueError when a batch of ``batch`` images of ``size`` pixels cannot train ``name`` in the
    memory of ``device``: its activations alone (a lower bound, in half precision) would not fit."""
    from .registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, **model_kwargs)
        channels = getattr(model, "in_channels", 3)
        per_image = activation_bytes(model.eval(), (channels, size, size)) // 2  # bf16: the most favourable case
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return  # a model the meta device cannot run, or a size it refuses: the trainer says why
    needed, have = per_image * batch, memory_bytes(device)
    if have is not None and needed > have:
        raise ValueError(f"a batch of {batch} images of {size}x{size} pixels needs at least {needed / 2**30:,.1f} GiB "
                         f"for {name}'s activations, more than the {have / 2**30:,.1f} GiB of {device}; use a smaller "
                         f"--resize or --batch-size")
