"""FastNet: a small network designed for time to accuracy on Fashion-MNIST at its native 28x28.

Built from the book's pieces (d2l ch. 7): a VGG-style block of a 3x3 convolution and a max-pool with batch
norm (Simonyan & Zisserman 2014; Ioffe & Szegedy 2015), optionally followed by the book's ``Residual``
blocks (He et al. 2015), in the layout of the CIFAR-10 speed runs (Page 2018; Jordan 2024, airbench):
pool before batch norm, a global max-pool head. See :func:`fastnet` for each choice and its measured figure.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..registry import register_model
from ._base import FcClassifier, ModelBase
from .resnet import Residual

__all__ = ["FastNet", "conv_pool_block"]


def conv_pool_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """A VGG block with batch norm in airbench's order: 3x3 conv, 2x2 max-pool, batch norm, ReLU.

    Pooling before the norm runs the norm and the ReLU on a quarter of the pixels; ``ceil_mode`` keeps an
    odd side's last row (7 -> 4, not 3).
    """
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                         nn.MaxPool2d(kernel_size=2, ceil_mode=True),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class FastNet(FcClassifier, ModelBase):
    """Stem (a 4x4 stride-2 conv, batch norm, ReLU: 28 -> 14 pixels), one ``layerN`` per width after the
    first (a :func:`conv_pool_block`, then ``residuals`` of the book's ``Residual`` blocks), a global max-pool
    and ``fc``."""

    default_image_size = 28
    min_input_size = 2  # the stem's 4x4 window (padding 1) needs two pixels; ceil_mode pools keep one

    def __init__(self, widths: Sequence[int] = (32, 64, 128), residuals: int = 0, *, num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or min(widths) < 1 or isinstance(residuals, bool) or not isinstance(residuals, int) \
                or residuals < 0:
            raise ValueError(f"fastnet needs widths of at least two positive channel counts and residuals >= 0, "
                             f"got widths={widths}, residuals={residuals!r}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], kernel_size=4, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        for i, (a, b) in enumerate(zip(widths, widths[1:]), 1):
            self.add_module(f"layer{i}", nn.Sequential(conv_pool_block(a, b),
                                                       *(Residual(b, b) for _ in range(residuals))))
        self.num_stages = len(widths) - 1
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.num_features = widths[-1]
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.pool(x))
        return x if pre_logits else self.fc(x)


@register_model
def fastnet(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> FastNet:
    """FastNet for time to accuracy on 28x28 Fashion-MNIST (``--recipe fast``); ``widths`` and ``residuals``
    are keywords (``--model-arg widths=[64,128,256]``).

    The book's blocks (Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, ch. 7, arXiv:2106.11342): VGG
    blocks (Simonyan & Zisserman 2014, arXiv:1409.1556) with batch norm (Ioffe & Szegedy 2015,
    arXiv:1502.03167) and, optionally, ``Residual`` blocks (He et al. 2015, arXiv:1512.03385), laid out as
    the CIFAR-10 speed runs do (Page 2018, "How to train your ResNet"; Jordan 2024, airbench,
    arXiv:2404.00498). Figures: whole training runs, one core of an Intel Xeon (Sapphire Rapids, AMX),
    bf16 autocast, seed 0, test-time flip (docs/notes.md):

    - the stem, a 4x4 stride-2 convolution (28 -> 14 px): at 28 px a step's time goes to max-pool and batch
      norm, not to the convolutions; halving the side halves the step at twice the width (39 vs 74 ms a batch
      of 256), and 32-64-128 channels in 5 epochs reach 0.921 where the issue's 3x3-stem 16-32-64 network
      reaches 0.904 in 3 epochs of the same time (a 3x3 stride-2 stem: 0.919; 2x2: 0.920);
    - pool before batch norm (airbench): the norm and the ReLU run on a quarter of the pixels;
    - ``widths=(32, 64, 128)``: 48-96-192 in the same time (3 epochs): 0.916;
    - ``residuals=0``: one ``Residual`` a stage reaches 0.922 in 4 epochs but takes twice the time an epoch;
    - a global max-pool head (airbench), no hidden linear layer: 94,410 parameters, 7.3 M multiply-adds.

    With ``--recipe fast`` (:data:`moderncnn.recipes.FAST_RECIPES`): 0.920 in 5 epochs (44 s of training),
    0.935 in 30 (300 s).
    """
    return FastNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
