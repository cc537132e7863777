"""TensorBoard: a run's scalars as it trains, and its pictures when it ends (``moderncnn train --tensorboard``).

TensorBoard is an optional extra (``pip install "moderncnn[tensorboard]"``); without it the command says so in
one line before training starts. Scalars are plotted against the number of training examples seen, so the
book's five points an epoch and the epoch's test accuracy share one axis.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn

__all__ = ["TensorBoard", "require_tensorboard"]

EXTRA = 'pip install "moderncnn[tensorboard]"'


def require_tensorboard():
    """torch's SummaryWriter class, or a one-line error naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch ships the writer; the tensorboard package it writes with is the extra
        raise ImportError(f"--tensorboard needs TensorBoard, which is not installed: {EXTRA}") from None
    return SummaryWriter


class TensorBoard:
    """An ``on_epoch_end`` for :func:`~moderncnn.fit` writing to ``log_dir`` (opened at the first epoch, once
    the run directory is claimed; ``fresh``: what an earlier run left there is removed first)."""

    def __init__(self, log_dir: str | Path, fresh: bool = False):
        self.writer_class = require_tensorboard()
        self.log_dir, self.fresh = Path(log_dir), fresh
        self.writer = None
        self.seen = 0

    def _open(self):
        if self.writer is None:
            if self.fresh:
                shutil.rmtree(self.log_dir, ignore_errors=True)
            self.writer = self.writer_class(str(self.log_dir))
        return self.writer

    def __call__(self, record: dict[str, Any]) -> None:
        writer = self._open()
        start, examples = self.seen, record.get("examples", 0)
        epoch = record["epoch"]
        for x, loss, acc in record.get("points") or [[epoch, record["loss"], record["train_acc"]]]:
            step = start + round((x - (epoch - 1)) * examples)
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/accuracy", acc, step)
        self.seen = start + examples
        if record.get("test_acc") is not None:  # a time-budget run tests after its last epoch only
            writer.add_scalar("test/accuracy", record["test_acc"], self.seen)
        writer.add_scalar("speed/examples_per_sec", record["examples_per_sec"], self.seen)
        writer.flush()

    def add_pictures(self, model: nn.Module, test: Any, history: list[dict[str, Any]], title: str = "",
                     start: nn.Module | None = None) -> None:
        """The run's pictures (curves, first-layer filters, one test image's activations and Grad-CAM, the
        most confident mistakes) under "pictures/", at the last step; with ``start`` (the network before
        training), also what training changed in the filters."""
        from ..curves import curves_figure
        from . import plot_activations, plot_filters, plot_mistakes, plot_saliency

        image = test.images[0]
        figures = {"curves": lambda: curves_figure(history, title), "filters": lambda: plot_filters(model),
                   "activations": lambda: plot_activations(model, image),
                   "gradcam": lambda: plot_saliency(model, image),
                   "mistakes": lambda: plot_mistakes(model, test, subset=min(len(test), 1000))}
        if start is not None:
            figures["filters_learned"] = lambda: plot_filters(model, start=start)
        writer = self._open()
        for name, draw in figures.items():
            writer.add_image(f"pictures/{name}", _pixels(draw()), self.seen, dataformats="HWC")
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _pixels(fig):
    """A figure's RGB pixels (H, W, 3), drawn off-screen (TensorBoard's add_figure would import pyplot)."""
    import numpy as np

    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
