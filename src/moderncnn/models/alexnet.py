"""AlexNet: the book's Fashion-MNIST form and the 2012 paper's form.

Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", NeurIPS (NIPS 2012).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import LocalResponseNorm
from ..registry import register_model
from ._base import ModelBase, SequentialModel, linear_like

__all__ = ["AlexNetBook", "AlexNet"]

# The paper's five convolutions: (out_channels, kernel, stride, padding, split across the two GPUs,
# response normalization after the ReLU, overlapping max-pool after that).
_PAPER_CONVS = [
    (96, 11, 4, 0, False, True, True),
    (256, 5, 1, 2, True, True, True),
    (384, 3, 1, 1, False, False, False),  # conv3 sees the maps of both GPUs
    (384, 3, 1, 1, True, False, False),
    (256, 3, 1, 1, True, False, True),
]


class AlexNetBook(SequentialModel):
    """The book's AlexNet: its ``nn.Sequential``, layer for layer; see :func:`alexnet`."""

    default_image_size = 224
    min_input_size = 193
    max_input_size = 224


class AlexNet(ModelBase):
    """AlexNet as the paper builds it; see :func:`alexnet_paper`.

    ``groups=2`` (the default) splits conv2, conv4 and conv5 into two halves as
    the paper's two GPUs did, and keeps each response normalization inside its
    half (conv1 is split too, but both halves see the whole image, so it is one
    ordinary convolution; conv3 and the fully connected layers cross over).
    ``groups=1`` is the same network on one GPU (:func:`alexnet_paper_1gpu`).
    """

    default_image_size = 227
    min_input_size = 227
    max_input_size = 258

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, groups: int = 2, dropout: float = 0.5):
        super().__init__()
        if groups < 1 or 32 % groups:
            raise ValueError(f"groups must divide 32 (conv channels 96, 256, 384), got {groups}: the paper's split is groups=2")
        self.in_channels, self.num_classes, self.groups = in_channels, num_classes, groups
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, k, s, p, split, lrn, pool in _PAPER_CONVS:
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=p, groups=groups if split else 1), nn.ReLU()]
            if lrn:
                # the paper's formula: alpha not divided by the size, as PyTorch's convention would have it
                layers.append(LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False,
                                                groups=groups))
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(x)
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        old = self.classifier[-1]
        self.classifier[-1] = linear_like(old, num_classes)
        self.num_classes = num_classes


def _book_alexnet(*, num_classes: int, in_channels: int) -> AlexNetBook:
    features = [
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]
    head = [
        nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, 4096), nn.ReLU(),
        nn.Dropout(p=0.5),
        nn.Linear(4096, num_classes),
    ]
    return AlexNetBook(*features, *head, head_start=len(features), in_channels=in_channels, num_classes=num_classes)


@register_model
def alexnet(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> AlexNetBook:
    """The book's AlexNet for Fashion-MNIST resized to 224x224 (d2l, "Deep Convolutional Neural Networks").

    After Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with
    Deep Convolutional Neural Networks", NeurIPS. Differs from the paper (see
    :func:`alexnet_paper`): padding 1 on conv1 for a 224 input, so the last map
    is 5x5 and the first linear layer takes 6400 features; no local response
    normalization, no two-GPU split; dropout after the ReLUs of both hidden
    linear layers, as in the paper.
    """
    return _book_alexnet(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def alexnet_paper(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> AlexNet:
    """AlexNet as Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with Deep Convolutional
    Neural Networks", NeurIPS, build it: split across two GPUs (``groups=2``).

    Input 3x227x227: the paper says 224, but only 227 gives its 55x55 conv1
    output (11x11, stride 4, no padding). conv1 96@11x11/4 -> ReLU -> LRN (size
    5, alpha 1e-4, beta 0.75, k 2) -> max-pool 3/2 (overlapping) -> conv2
    256@5x5 pad 2 -> ReLU -> LRN -> max-pool -> conv3-5 384/384/256@3x3 -> max-pool
    -> FC 4096 -> FC 4096 -> FC ``num_classes``, dropout 0.5 on the outputs of
    the two hidden FC layers. conv2, conv4 and conv5 are grouped in two halves
    as on the paper's two GPUs, and each LRN sums only over the maps of its own
    half: 60,965,224 parameters (the paper's "60 million") and 724 M
    multiply-adds; :func:`alexnet_paper_1gpu` is the ungrouped network. The
    LRN is the formula the paper prints, ``a / (k + alpha * sum a^2) ** beta``,
    not PyTorch's convention that divides alpha by the size (which makes the
    effective alpha 2e-5). PyTorch's default initialisation is kept (the paper:
    N(0, 0.01) weights, biases 1 in conv2, conv4, conv5 and the hidden FC layers).

    Module names ``features``/``classifier`` follow torchvision, but
    torchvision's ``alexnet`` is a different network (Krizhevsky's 2014 "One
    weird trick" variant: 64/192/384/256/256 channels, no LRN, adaptive
    pooling, dropout before the linear layers), so its weights do not load here.
    """
    return AlexNet(num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def alexnet_paper_1gpu(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> AlexNet:
    """:func:`alexnet_paper` on one GPU: no two-GPU split (``groups=1``), everything else the paper's.

    Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with Deep
    Convolutional Neural Networks", NeurIPS. conv2, conv4 and conv5 see all
    their input maps and each LRN window spans all the maps: 62,378,344
    parameters, 1,135 M multiply-adds (the split saves 1.4 M parameters and
    0.41 G multiply-adds). The paper's own one-GPU baseline (its section 3.2)
    had half the kernels in most convolutional layers; this is the two-GPU
    network joined instead.
    """
    return AlexNet(num_classes=num_classes, in_channels=in_channels, groups=1, **kwargs)
