"""A run's curves: the book's animator (train loss, train acc, test acc against epoch) as a picture.

Drawn into the run directory at every commit (:mod:`moderncnn.rundir`), live in a notebook
(:mod:`moderncnn.show.live`) and for TensorBoard (:mod:`moderncnn.show.board`), from a run's history alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .figures import new_figure, save_figure

__all__ = ["plot_curves", "curves_figure", "curves_title"]


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The book's animator as a PNG: train loss, train acc and test acc against epoch."""
    return save_figure(curves_figure(history, title), path)


def curves_figure(history: list[dict[str, Any]], title: str = "", epochs: int | None = None):
    """The book's animator as a matplotlib Figure: train loss and train acc at the epoch's ``points`` (the
    book's five an epoch) where the history has them, else once an epoch; test acc once an epoch.
    ``epochs``: the run's length, to which the x axis reaches (as the book's animator's does) while it trains."""
    fig = new_figure((4.5, 3.2))
    ax = fig.add_subplot()
    ends = [h["epoch"] for h in history]
    points = [p for h in history for p in h.get("points") or [[h["epoch"], h.get("loss"), h.get("train_acc")]]]
    for column, label, style in ((1, "train loss", "-"), (2, "train acc", "m--")):
        ax.plot([p[0] for p in points], [math.nan if p[column] is None else p[column] for p in points], style,
                label=label)
    ax.plot(ends, [math.nan if h.get("test_acc") is None else h["test_acc"] for h in history], "g-.",
            label="test acc")
    ax.set_xlabel("epoch")
    right = max(ends[-1], epochs or 0, 2)
    ax.set_xlim(0 if any(h.get("points") for h in history) else 1, right)  # points lie inside epoch 1
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def curves_title(meta: dict[str, Any]) -> str:
    """The curves' title: the model and recipe, and what makes the run not the book's (the sample, a subset)."""
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    notes = ["embedded sample"] if data.get("is_sample") else []
    if recipe.get("subset"):
        notes.append(f"subset of {recipe['subset']:,}")
    return f"{meta.get('model')} ({recipe.get('name')} recipe{''.join(', ' + n for n in notes)})"
