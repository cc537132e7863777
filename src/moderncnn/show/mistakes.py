"""The test images a model gets most confidently wrong, with their true and predicted labels."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..figures import new_figure
from .images import class_names, display_image, preprocessing_of

__all__ = ["find_mistakes", "plot_mistakes", "MAX_PICTURED"]

#: The most images one picture of mistakes shows: 400 tiles is a page 70 tiles high, already more than a
#: reader takes in (and matplotlib takes minutes over thousands); find_mistakes gives any number.
MAX_PICTURED = 400


@torch.no_grad()
def find_mistakes(model: nn.Module, data: Any, n: int = 36, *, subset: int | None = None,
                  batch_size: int = 256, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The ``n`` misclassified images of ``data`` (an ImageDataset) with the highest predicted probability.

    Images are prepared with the model's preprocessing; ``subset``: only that many test images (the fixed,
    class-balanced sample that ``eval --subset`` takes); ``amp_dtype``: the forward pass in that autocast
    precision, as :func:`~moderncnn.evaluate.evaluate` takes it (so the mistakes are the ones it counts). Returns ``{"images": uint8 (k, C, H, W) as stored,
    "true": [k], "predicted": [k], "probability": [k], "examined": N, "wrong": count}``.
    """
    from ..data import DeviceLoader
    from ..evaluate import autocast

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    prep = preprocessing_of(model)
    device = next(model.parameters()).device
    loader = DeviceLoader(data, batch_size, device=device, resize=prep.resize, normalize=prep.normalize,
                          subset=subset)
    model.eval()
    with autocast(device, amp_dtype):
        probs = torch.cat([model(x).float().softmax(1).cpu() for x, _ in loader])
    confidence, predicted = probs.max(1)
    labels = loader.labels.cpu()
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)[:n]]
    return {"images": loader.images[worst.to(loader.images.device)].cpu(), "true": labels[worst].tolist(),
            "predicted": predicted[worst].tolist(), "probability": confidence[worst].tolist(),
            "examined": len(labels), "wrong": len(wrong)}


def plot_mistakes(model: nn.Module, data: Any, n: int = 36, *, subset: int | None = None, columns: int = 6,
                  amp_dtype: torch.dtype | None = None):
    """A matplotlib Figure of :func:`find_mistakes`: each image with its true label and, in red, the
    prediction and its probability; the title says how many of how many images were wrong."""
    if n > MAX_PICTURED:
        raise ValueError(f"n must be at most {MAX_PICTURED} for a picture, got {n}; find_mistakes lists any number")
    found = find_mistakes(model, data, n, subset=subset, amp_dtype=amp_dtype)
    names = list(getattr(data, "classes", None) or class_names(model))
    k = len(found["true"])
    columns = max(1, min(columns, k))
    rows = max(1, math.ceil(k / columns))
    fig = new_figure((1.75 * columns + 0.3, 2.05 * rows + 0.7))
    model_name = getattr(model, "model_name", type(model).__name__)
    title = (f"{model_name}: the {k} most confident mistakes ({found['wrong']} wrong of "
             f"{found['examined']} test images)")
    if k == 0:
        fig.text(0.5, 0.5, f"no mistakes on the {found['examined']} test images", ha="center", va="center")
    for i in range(k):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(display_image(found["images"][i].float() / 255), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"true: {names[found['true'][i]]}", fontsize=8, pad=2)
        ax.set_xlabel(f"said: {names[found['predicted'][i]]} ({found['probability'][i]:.2f})", fontsize=8,
                      color="firebrick", labelpad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
