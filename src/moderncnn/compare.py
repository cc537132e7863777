"""Architectures side by side: what each costs (parameters, multiply-adds) and, for trained runs, what it reached.

``compare(["lenet", "alexnet", "resnet*"])`` tabulates models by name (wildcards allowed) at their default
input; ``compare(["runs/lenet-book", "runs/alexnet-book"])`` tabulates run directories written by
:func:`moderncnn.fit` / ``moderncnn train``, with each run's recipe, epochs, accuracies and speed, and the cost
of its model at the size it was trained at. :func:`plot_runs` draws the runs' curves on shared axes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["compare", "format_comparison", "plot_runs", "SORT_KEYS"]

#: ``--sort`` keys: cost ascending, results descending (best first).
SORT_KEYS = {"params": False, "macs": False, "test_acc": True, "examples_per_sec": True}


def _cost(name: str, model_kwargs: dict[str, Any], input_size: Sequence[int] | None) -> dict[str, Any]:
    """Parameters and multiply-adds of a model, built and run on the meta device (no memory, no weights)
    where its code allows, else on the CPU."""
    from .inspect import summary
    from .registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(name, **model_kwargs)
        size = tuple(input_size) if input_size is not None else tuple(model.default_input_size)
        totals = summary(model, size, device="meta").totals
    except (RuntimeError, NotImplementedError):  # a registered model whose code needs real tensors
        model = create_model(name, **model_kwargs)
        size = tuple(input_size) if input_size is not None else tuple(model.default_input_size)
        totals = summary(model, size).totals
    return {"model": name, "input": "x".join(map(str, size)), "num_classes": model.num_classes,
            "params": totals.params, "macs": totals.macs}


def _device(meta: dict[str, Any]) -> str | None:
    device = meta.get("device")
    if device and meta.get("processes", 1) > 1:  # torchrun: rank 0 recorded its own device
        return f"{meta['processes']} x {device.split(':')[0]}"
    return device


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        history = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON lines ({e}); the run directory is damaged") from None
    if not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{path} holds lines that are not JSON objects; the run directory is damaged")
    return history


def _run_row(run_dir: Path) -> dict[str, Any]:
    from .rundir import RunDir

    files = RunDir(run_dir)
    if not files.exists():
        raise ValueError(f"{run_dir} is not a run directory (no run.json): give directories written by "
                         f"'moderncnn train', or model names")
    meta = files.read_meta()
    if not isinstance(meta.get("model"), str):
        raise ValueError(f"{files.run_json} names no model; the run directory is damaged")
    inputs = meta.get("input", {})
    size = (inputs["channels"], inputs["size"], inputs["size"]) if "channels" in inputs and "size" in inputs \
        else None
    kwargs = meta.get("model_kwargs", {})
    row = _cost(meta["model"], kwargs, size)
    extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_channels")}
    if extra:  # e.g. vgg11_book's ratio: the same name, another network
        row["model"] += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
    history = _read_history(files.metrics)
    last = meta.get("final") or (history[-1] if history else {})
    recipe = meta.get("recipe", {})
    data = meta.get("data", {})
    row.update(run=str(run_dir), history=history, status=meta.get("status"), recipe=recipe.get("name"),
               epochs=f"{meta.get('epochs_done', len(history))}/{recipe.get('epochs', '?')}",
               data=data.get("name", "?") + (" (sample)" if data.get("is_sample") else ""),
               device=_device(meta),
               wall_seconds=sum(h.get("wall_seconds", 0.0) for h in history) if history else None,
               **{k: last.get(k) for k in ("loss", "train_acc", "test_acc", "examples_per_sec")})
    return row


def compare(items: Sequence[str | Path], input_size: Sequence[int] | None = None,
            num_classes: int | None = None, sort: str | None = None,
            model_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One dict per model name (wildcards expand) or run directory, in the order given; a folder that holds
    run directories stands for them (sorted by name).

    Every row has ``model``, ``input`` ("CxHxW"), ``num_classes``, ``params`` and ``macs``. A run's row adds
    ``run``, ``status``, ``recipe``, ``epochs`` ("done/total"), ``data``, ``device``, ``loss``,
    ``train_acc``, ``test_acc``, ``examples_per_sec`` (the finished run's figures, else its last epoch's),
    ``wall_seconds`` (its epochs' training and testing time) and ``history`` (metrics.jsonl). Models by
    name are built with their defaults, or ``num_classes``, ``input_size`` (C, H, W) and ``model_kwargs``
    (keywords for their builders, e.g. ``{"groups": 1}``; named in the row's ``model``) if given; runs with
    the classes, the input and the keywords they were trained with.
    ``sort``: a key of :data:`SORT_KEYS`.
    """
    from .registry import get_model_builder, list_models

    if sort is not None and sort not in SORT_KEYS:
        raise ValueError(f"cannot sort by {sort!r}; use one of {', '.join(SORT_KEYS)}")
    rows = []
    for item in items:
        path = Path(item)
        if path.is_file():  # a run's model.safetensors or run.json stands for its run
            path = path.parent
        if path.exists():
            inner = sorted(d for d in path.iterdir() if (d / "run.json").is_file()) \
                if path.is_dir() and not (path / "run.json").exists() else []
            rows += [_run_row(d) for d in inner or [path]]  # a folder of runs stands for its runs
            continue
        text = str(item)
        if any(c in text for c in "*?["):
            names = list_models(text)
            if not names:
                raise ValueError(f"no model matches {text!r}; 'moderncnn list' shows all")
        elif "/" in text or text.endswith(".json"):
            raise ValueError(f"no such run directory: {text}")
        else:
            get_model_builder(text)  # an unknown name: one line with the closest names
            names = [text]
        kwargs = dict(model_kwargs or {})
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if input_size is not None:
            kwargs["in_channels"] = input_size[0]
        for name in names:
            row = _cost(name, kwargs, input_size)
            if model_kwargs:  # another network under the same name, as for a run's model_kwargs
                row["model"] += " (" + ", ".join(f"{k}={v}" for k, v in model_kwargs.items()) + ")"
            rows.append(row)
    if sort is not None:
        missing = [r for r in rows if r.get(sort) is None]
        ranked = sorted((r for r in rows if r.get(sort) is not None), key=lambda r: r[sort], reverse=SORT_KEYS[sort])
        rows = ranked + missing
    return rows


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{value:,}"
    if key == "macs":
        return f"{value / 1e6:,.1f} M"
    if key in ("loss", "train_acc", "test_acc"):
        return f"{value:.3f}"
    if key == "examples_per_sec":
        return f"{value:,.0f}"
    if key == "wall_seconds":
        return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"
    return str(value)


_COLUMNS = [("run", "run"), ("model", "model"), ("input", "input"), ("params", "params"), ("macs", "MACs"),
            ("recipe", "recipe"), ("epochs", "epochs"), ("data", "data"), ("loss", "loss"),
            ("train_acc", "train acc"), ("test_acc", "test acc"), ("examples_per_sec", "ex/s"),
            ("wall_seconds", "time"), ("device", "device")]
_NUMERIC = {"params", "macs", "loss", "train_acc", "test_acc", "examples_per_sec", "wall_seconds"}


def format_comparison(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """An aligned text table (or a Markdown one); the run columns appear only when some row is a run."""
    runs = any("run" in r for r in rows)
    columns = [(k, h) for k, h in _COLUMNS if runs or k in ("model", "input", "params", "macs")]
    cells = [[_fmt(r.get(k), k) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |",
                 "|" + "|".join("---:" if k in _NUMERIC else "---" for k, _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if k in _NUMERIC else v.ljust(w)
                         for v, w, (k, _) in zip(values, widths, columns)).rstrip()

    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


def plot_runs(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy and train loss against epoch, one line per run row of :func:`compare`, as a PNG."""
    from .figures import new_figure, save_figure

    runs = [r for r in rows if r.get("history")]
    if not runs:
        raise ValueError("nothing to plot: give run directories with at least one finished epoch")
    fig = new_figure((9, 3.4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for r in runs:
        epochs = [h["epoch"] for h in r["history"]]
        label = Path(r["run"]).name
        acc_ax.plot(epochs, [math.nan if h.get("test_acc") is None else h["test_acc"] for h in r["history"]],
                    marker=".", label=label)  # None: an epoch not tested (a time-budget run's before its last)
        loss_ax.plot(epochs, [h["loss"] for h in r["history"]], marker=".", label=label)
    for ax, what in ((acc_ax, "test accuracy"), (loss_ax, "train loss")):
        ax.set_xlabel("epoch")
        ax.set_title(what, fontsize=9)
        ax.grid(True)
    acc_ax.legend(fontsize=7)
    return save_figure(fig, path)
