"""The mean/std a run normalises its inputs by, as its recipe says: the training set's own, or ImageNet's.

Whatever is chosen is recorded in run.json (``input.normalize``), and ``moderncnn eval``, ``predict`` and
``export`` apply exactly that (:class:`~moderncnn.checkpoint.Preprocessing`).
"""

from __future__ import annotations

import torch

from ..recipes import Recipe

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "channel_stats", "input_normalization"]

#: The per-channel (R, G, B) mean and std torchvision's ImageNet weights were trained with (their
#: ``transforms()``; timm's IMAGENET_DEFAULT_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalization(recipe: Recipe, images: torch.Tensor) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` per channel of ``images`` (uint8, N x C x H x W) as ``recipe`` asks, or None."""
    if not recipe.normalize:
        return None
    if recipe.normalize_stats == "data":
        return channel_stats(images)
    channels = images.shape[1]
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if channels == 1:
        # The weights' first conv is summed over R, G, B for grey images (checkpoint.load_pretrained), so it
        # sees a grey x as R = G = B = x; the RGB network computed sum_c w_c (x - m_c) / s_c, ours computes
        # sum_c w_c (x - m) / s. With the mean of the three stds the scale of x is right to 1.3% (s_c is 0.224
        # to 0.229); with the mean of the three means the offset differs by a constant per output channel,
        # which the batch norm after that conv takes out (resnet, densenet, vgg*_bn: batch statistics in
        # training, its running mean after) or the conv's bias learns (the plain VGGs); m_c - m is at most
        # 0.043. Exact would mean rescaling each colour's kernel before the sum; timm's adapt_to_chs takes the
        # same averages.
        return [round(sum(IMAGENET_MEAN) / 3, 6)], [round(sum(IMAGENET_STD) / 3, 6)]
    raise ValueError(f"ImageNet's mean/std are for RGB or grey images, and these have {channels} channels; "
                     f"use --normalize-stats data")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks (no big float copy)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
    n = images.numel() / c
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]
