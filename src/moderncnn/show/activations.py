"""What each stage of a network makes of one image: the input, then a grid of each stage's feature maps."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..figures import new_figure
from .images import display_image, mosaic, normalise, read_image, scaled
from .stages import feature_stages

__all__ = ["stage_outputs", "plot_activations"]


@torch.no_grad()
def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``[(stage label, its output (C, H, W)), ...]`` for one prepared input batch ``x`` of one image."""
    model.eval()
    stages = feature_stages(model, x)
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for i, (_, module, _) in enumerate(stages):
        # clone: a later in-place activation must not change what was recorded
        handles.append(module.register_forward_hook(
            lambda m, inp, out, i=i: outputs.setdefault(i, out.detach().float().cpu().clone())))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [(label, outputs[i][0]) for i, (label, _, _) in enumerate(stages)]


def _describe(model: nn.Module, label: str) -> str:
    """``"0-2"`` -> ``"modules 0-2: Conv2d to AvgPool2d"``: which modules a stage spans, in words."""
    first, _, tail = label.partition("-")
    names = dict(model.named_modules())
    # feature_stages' label: "features.3-5" within one parent, "features.18-avgpool" across two
    last = next((n for n in (f"{first.rpartition('.')[0]}.{tail}".lstrip("."), tail) if n in names), None) \
        if tail else first
    if first not in names or last is None:  # a label no module answers to: say it as it is
        return f"modules {label}"
    kinds = [type(names[n]).__name__ for n in dict.fromkeys((first, last))]
    return f"{'modules' if tail else 'module'} {label}: {' to '.join(kinds)}"


def _strongest(maps: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` maps with the highest mean activation, in channel order (a dead map tells a learner little)."""
    return maps[maps.flatten(1).mean(1).argsort(descending=True)[:k].sort().values]


def plot_activations(model: nn.Module, image: str | Path | torch.Tensor, maps_per_stage: int = 16,
                     columns: int = 8):
    """A matplotlib Figure: the image as the model sees it, then for each stage its ``maps_per_stage`` most
    active feature maps (in channel order, each scaled to its own range: viridis, dark low, yellow high).

    ``image``: a file or a tensor (see :func:`~moderncnn.show.images.read_image`), prepared with the run's own
    preprocessing. Stages are the family's blocks (:func:`~moderncnn.show.stages.feature_stages`).
    """
    x = read_image(model, image)
    outputs = stage_outputs(model, normalise(model, x))
    fig = new_figure((10.0, 1.0 + 2.4 * (len(outputs) + 1)))
    grid = fig.add_gridspec(len(outputs) + 1, 1)
    ax = fig.add_subplot(grid[0])
    ax.imshow(display_image(x[0]), cmap="gray", vmin=0, vmax=1)
    model_name = getattr(model, "model_name", type(model).__name__)
    ax.set_title(f"{model_name}: the input ({x.shape[1]}x{x.shape[2]}x{x.shape[3]}), then each stage's feature "
                 f"maps (each scaled to its own range)", fontsize=10)
    ax.set_axis_off()
    for row, (label, maps) in enumerate(outputs, 1):
        where = _describe(model, label)
        shown = _strongest(maps, maps_per_stage)
        tiles = scaled(shown)
        ax = fig.add_subplot(grid[row])
        ax.imshow(mosaic(tiles, min(columns, len(tiles))).numpy(), cmap="viridis", vmin=0, vmax=1,
                  interpolation="nearest")
        c, h, w = maps.shape
        which = f"all {c}" if len(shown) == c else f"the {len(shown)} most active"
        ax.set_title(f"stage {row} of {len(outputs)} ({where}): {c} maps of {h}x{w}; {which}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig

