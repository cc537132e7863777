"""The kernels a convolution learned, as a grid of tiles (the book's figure of AlexNet's first layer)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..figures import new_figure
from .images import mosaic, scaled
from .stages import find_layer

__all__ = ["plot_filters"]


def _weight(module: nn.Module) -> torch.Tensor:
    """(out, in, k, k); LeNet-5's partial convolution holds only its connected kernels, so ask for the dense one."""
    weight = module.dense_weight() if hasattr(module, "dense_weight") else module.weight
    return weight.detach().float().cpu()


def _start_weight(start: nn.Module, name: str, shape: torch.Size) -> torch.Tensor:
    try:
        weight = _weight(find_layer(start, name)[1])
    except ValueError:
        weight = None
    if weight is None or weight.shape != shape:
        raise ValueError(f"the start has no convolution {name} with kernels of shape {tuple(shape)}: give the same "
                         f"network before training")
    return weight


def _tiles(weight: torch.Tensor, max_tiles: int) -> tuple[torch.Tensor, int, str]:
    """The tiles to draw, their number of columns, and what they are (for the title)."""
    out_ch, in_ch = weight.shape[:2]
    if in_ch == 3:  # a colour filter: its three input channels as one RGB tile, scaled together
        w = weight[:max_tiles]
        tiles = scaled(w, dims=(1, 2, 3)).permute(0, 2, 3, 1)
        return tiles, math.ceil(math.sqrt(len(tiles))), f"{_count(len(tiles), out_ch)} filters, RGB"
    if in_ch == 1:
        w = weight[:max_tiles, 0]
        return scaled(w, symmetric=True), math.ceil(math.sqrt(len(w))), f"{_count(len(w), out_ch)} filters"
    # a deeper layer: one row per output channel, one tile per input channel it reads
    side = max(1, int(math.sqrt(max_tiles)))
    w = weight[:side, :side]
    tiles = scaled(w, symmetric=True).reshape(-1, *w.shape[2:])
    return tiles, w.shape[1], (f"rows: the first {w.shape[0]} of {out_ch} filters, columns: "
                               f"the first {w.shape[1]} of {in_ch} input channels")


def _count(shown: int, total: int) -> str:
    return f"all {total}" if shown == total else f"the first {shown} of {total}"


def plot_filters(model: nn.Module, layer: str | None = None, max_tiles: int = 128, *,
                 start: nn.Module | None = None):
    """A matplotlib Figure of the kernels of convolution ``layer`` (default: the model's first).

    A filter over one input channel is a grey tile, one over three an RGB tile (as the book shows AlexNet's
    first layer); a deeper layer's kernels are a grid of output channels by input channels. Grey tiles are
    scaled each on its own, from -max|w| (black) through 0 (mid-grey) to +max|w| (white).

    ``start``: the same network before training (:func:`~moderncnn.train.initial_model`): draw what training
    changed, the kernels minus their start. A short run moves large kernels little from their random start
    (AlexNet's 11x11 on Fashion-MNIST, whose images are 8x enlarged and so smooth), which hides what they
    learned under the noise they started as; the change shows it.
    """
    name, module = find_layer(model, layer)
    weight = _weight(module)
    if start is not None:
        weight = weight - _start_weight(start, name, weight.shape)
    tiles, columns, what = _tiles(weight, max_tiles)
    # gaps: blank (NaN) between grey tiles, white between colour ones (imshow has no 'bad' colour for RGB)
    image = mosaic(tiles, columns, pad=max(1, weight.shape[-1] // 5), fill=1.0 if tiles.dim() == 4 else float("nan"))
    rows = image.shape[0] / max(image.shape[1], 1)
    fig = new_figure((6.4, max(2.2, 6.0 * rows + 0.9)))
    ax = fig.add_subplot()
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    k = weight.shape[-1]
    model_name = getattr(model, "model_name", type(model).__name__)
    scale = "" if tiles.dim() == 4 else "\nblack: negative, grey: 0, white: positive"
    changed = "\nwhat training changed: the weights minus their start" if start is not None else ""
    ax.set_title(f"{model_name}, layer {name}: {k}x{k} kernels{changed}\n{what}{scale}", fontsize=9)
    fig.tight_layout()
    return fig
