"""ResNet: residual networks (d2l 7.6; He et al. 2015).

Book form: ``Residual`` and ``resnet_block`` exactly as the book writes them
(conv biases, a bare 1x1 conv on the shortcut), assembled into the book's
ResNet-18 ``nn.Sequential`` so the book's state dicts load.
Paper form: ``BasicBlock`` / ``Bottleneck`` (with ``expansion``) and one
``ResNet`` class driven by a block type and a list of block counts, with
torchvision's module names so its state dicts load with ``strict=True``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
from torch.nn import functional as F

from ..registry import register_model
from ._base import ModelBase, SequentialModel, linear_like

__all__ = ["Residual", "resnet_block", "BasicBlock", "Bottleneck", "ResNet"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Residual(nn.Module):
    """The book's residual block: two 3x3 convs with batch norm; a 1x1 conv on the shortcut if asked.

    ``use_1x1conv=True, strides=2`` halves height and width and changes the channel count.
    """

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False, strides: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        if use_1x1conv:
            self.conv3 = nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
        else:
            self.conv3 = None
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3:
            X = self.conv3(X)
        Y += X
        return F.relu(Y)


def resnet_block(input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False) -> list[Residual]:
    """The book's ResNet module: ``num_residuals`` blocks; the first halves H/W unless ``first_block``."""
    blk = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blk.append(Residual(num_channels, num_channels))
    return blk


class BasicBlock(nn.Module):
    """Two 3x3 convs (He et al. 2015, Fig. 2 left); ``downsample`` projects the shortcut when shapes change."""

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by ``expansion`` (He et al. 2015, Fig. 5 right).

    The stride sits on the 3x3 conv as in torchvision ("ResNet v1.5"); the paper put it on the first
    1x1 conv, which skips three quarters of the input. Same parameters, slightly better accuracy.
    """

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(ModelBase):
    """The paper's ImageNet ResNet (Table 1) with torchvision's module names.

    Stem 7x7/2 conv + 3x3/2 max-pool, four stages ``layer1..4`` of 64/128/256/512 planes (the last
    three start with stride 2), global average pool, ``fc``. Shortcuts are identities except where the
    shape changes: there a strided 1x1 conv + batch norm (the paper's option B).
    """

    default_image_size = 224
    min_input_size = 1  # every downsampling layer is padded, so even 1x1 inputs stay 1x1

    def __init__(
        self,
        block: type[Union[BasicBlock, Bottleneck]],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()  # no parameters, so torchvision's state dicts still load
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    nn.init.constant_(last_bn.weight, 0)

    def _make_layer(self, block: type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.avgpool(x))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_like(self.fc, num_classes)
        self.num_classes = num_classes


def _resnet(block: type[Union[BasicBlock, Bottleneck]], layers: Sequence[int], **kwargs) -> ResNet:
    return ResNet(block, layers, **kwargs)


@register_model
def resnet18_book(*, num_classes: int = 10, in_channels: int = 1) -> SequentialModel:
    """The book's ResNet-18 (d2l 7.6): modules b1..b5 of ``Residual`` blocks, global pool, ``Linear(512, 10)``.

    Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, ch. 7.6 (arXiv:2106.11342), after He et al. 2015
    (arXiv:1512.03385). Differs from the paper (and ``resnet18``): every conv keeps its bias, and the
    projection shortcut is a bare 1x1 conv without batch norm. The book trains it on 96x96 Fashion-MNIST.
    """
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    net = SequentialModel(b1, b2, b3, b4, b5,
                          nn.AdaptiveAvgPool2d((1, 1)),
                          nn.Flatten(), nn.Linear(512, num_classes),
                          head_start=5, in_channels=in_channels, num_classes=num_classes)
    net.default_image_size = 96
    return net


@register_model
def resnet18(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-18 (He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition",
    arXiv:1512.03385, CVPR 2016): ``BasicBlock`` x [2, 2, 2, 2]. torchvision's layout and init."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet34(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-34 (He et al. 2015, arXiv:1512.03385): ``BasicBlock`` x [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet50(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-50 (He et al. 2015, arXiv:1512.03385): ``Bottleneck`` x [3, 4, 6, 3].

    Stride on the 3x3 conv (torchvision's "v1.5"), not on the first 1x1 conv as in the paper.
    """
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet101(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-101 (He et al. 2015, arXiv:1512.03385): ``Bottleneck`` x [3, 4, 23, 3] (stride as in ``resnet50``)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def resnet152(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-152 (He et al. 2015, arXiv:1512.03385): ``Bottleneck`` x [3, 8, 36, 3] (stride as in ``resnet50``)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, in_channels=in_channels, **kwargs)
