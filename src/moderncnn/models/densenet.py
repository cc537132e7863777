"""DenseNet: densely connected networks (d2l 7.7; Huang et al. 2016).

Book form: ``conv_block``, ``DenseBlock`` and ``transition_block`` exactly as
the book writes them (BN-ReLU-3x3 conv with bias, no bottleneck, no
compression beyond halving), assembled into the book's ``nn.Sequential`` so
its state dicts load.
Paper form: DenseNet-BC (bottleneck 1x1 conv to ``bn_size * k`` channels,
compression 0.5) with torchvision's module names
(``features.denseblock1.denselayer1.norm1`` ...), so torchvision's state dicts
load with ``strict=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn import functional as F

from ..registry import register_model
from ._base import ModelBase, SequentialModel, linear_like

__all__ = ["conv_block", "DenseBlock", "transition_block", "DenseLayer", "DenseBlockBC", "Transition", "DenseNet"]


def _min_input_size(num_transitions: int) -> int:
    # the stem divides by 4 rounding up (ceil(H / 4)), then each 2x2 average pool needs at least 2 pixels
    return 4 * (2**num_transitions - 1) + 1


def conv_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """The book's pre-activation conv block: BN, ReLU, 3x3 conv (padding 1) to ``num_channels``."""
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """The book's dense block: each ``conv_block`` sees the concatenation of the input and all earlier outputs.

    Output channels: ``input_channels + num_convs * num_channels`` (``num_channels`` is the growth rate).
    """

    def __init__(self, num_convs: int, input_channels: int, num_channels: int):
        super().__init__()
        layer = []
        for i in range(num_convs):
            layer.append(conv_block(num_channels * i + input_channels, num_channels))
        self.net = nn.Sequential(*layer)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)
        return X


def transition_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """The book's transition layer: BN, ReLU, 1x1 conv to ``num_channels``, 2x2/2 average pool."""
    return nn.Sequential(
        nn.BatchNorm2d(input_channels), nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2))


class DenseLayer(nn.Module):
    """DenseNet-B layer: BN-ReLU-1x1 conv to ``bn_size * growth_rate``, BN-ReLU-3x3 conv to ``growth_rate``."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        return F.dropout(x, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else x


class DenseBlockBC(nn.ModuleDict):
    """``num_layers`` ``DenseLayer``s named ``denselayer1..N`` (torchvision's names), densely concatenated."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float = 0.0):
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """DenseNet-C transition: BN, ReLU, 1x1 conv (no bias) to the compressed width, 2x2/2 average pool."""

    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(ModelBase):
    """The paper's ImageNet DenseNet-BC (Table 1) with torchvision's module names.

    ``features`` = stem (``conv0`` 7x7/2, ``norm0``, ``relu0``, ``pool0`` 3x3/2), dense blocks
    ``denseblock1..4`` separated by ``transition1..3``, final ``norm5``; then ReLU, global average pool,
    ``classifier``. ``compression`` is the paper's theta (0.5: each transition halves the channels).
    """

    default_image_size = 224
    min_input_size = _min_input_size(3)  # 29 for four dense blocks; set per instance from block_config

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.min_input_size = _min_input_size(len(block_config) - 1)
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlockBC(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                out_features = int(num_features * compression)
                self.features.add_module(f"transition{i + 1}", Transition(num_features, out_features))
                num_features = out_features
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        # parameter-free modules: torchvision's state dicts still load, and stages() composes to forward
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.avgpool(x))
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier = linear_like(self.classifier, num_classes)
        self.num_classes = num_classes


def _densenet(growth_rate: int, block_config: Sequence[int], num_init_features: int, **kwargs) -> DenseNet:
    return DenseNet(growth_rate, block_config, num_init_features, **kwargs)


@register_model
def densenet_book(*, num_classes: int = 10, in_channels: int = 1) -> SequentialModel:
    """The book's DenseNet (d2l 7.7): b1, four dense blocks of 4 convs (growth 32) with a halving
    transition block between each two, BN, ReLU, global average pool, ``Linear``.

    Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, ch. 7.7 (arXiv:2106.11342), after Huang et al.
    2016 (arXiv:1608.06993). Differs from the paper's DenseNet-BC (``densenet121``): no 1x1 bottleneck in
    the dense layers, convs keep their bias, far fewer layers. The book trains it on 96x96 Fashion-MNIST.
    """
    b1 = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    num_channels, growth_rate = 64, 32
    num_convs_in_dense_blocks = [4, 4, 4, 4]
    blks = []
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blks.append(DenseBlock(num_convs, num_channels, growth_rate))
        num_channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blks.append(transition_block(num_channels, num_channels // 2))
            num_channels = num_channels // 2
    net = SequentialModel(
        b1, *blks,
        nn.BatchNorm2d(num_channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, num_classes),
        head_start=len(blks) + 3, in_channels=in_channels, num_classes=num_classes)
    net.default_image_size = 96
    net.min_input_size = _min_input_size(len(num_convs_in_dense_blocks) - 1)
    return net


@register_model
def densenet121(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> DenseNet:
    """DenseNet-BC-121 (Huang, Liu, van der Maaten & Weinberger 2016, "Densely Connected Convolutional
    Networks", arXiv:1608.06993, CVPR 2017): growth 32, blocks (6, 12, 24, 16). torchvision's layout."""
    return _densenet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def densenet169(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> DenseNet:
    """DenseNet-BC-169 (Huang et al. 2016, arXiv:1608.06993): growth 32, blocks (6, 12, 32, 32)."""
    return _densenet(32, (6, 12, 32, 32), 64, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def densenet201(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> DenseNet:
    """DenseNet-BC-201 (Huang et al. 2016, arXiv:1608.06993): growth 32, blocks (6, 12, 48, 32)."""
    return _densenet(32, (6, 12, 48, 32), 64, num_classes=num_classes, in_channels=in_channels, **kwargs)
