"""GoogLeNet (Szegedy et al. 2014): the book's 96x96 form and the paper's form with auxiliary classifiers.

Both forms are built from the book's ``Inception`` block, which is exactly the
paper's inception module (four branches, ReLU after every convolution, joined
along the channel axis), and from one table of the paper's channel numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import LocalResponseNorm
from ..registry import register_model
from ._base import ModelBase, SequentialModel, linear_like

__all__ = ["Inception", "GoogLeNet", "GoogLeNetOutputs", "googlenet", "googlenet_paper"]

# Table 1 of the paper, stage by stage: name -> (in_channels, #1x1, (#3x3 reduce, #3x3),
# (#5x5 reduce, #5x5), pool proj). The book's b3, b4 and b5 use the same numbers.
_INCEPTION_STAGES: list[dict[str, tuple]] = [
    {
        "3a": (192, 64, (96, 128), (16, 32), 32),
        "3b": (256, 128, (128, 192), (32, 96), 64),
    },
    {
        "4a": (480, 192, (96, 208), (16, 48), 64),
        "4b": (512, 160, (112, 224), (24, 64), 64),
        "4c": (512, 128, (128, 256), (24, 64), 64),
        "4d": (512, 112, (144, 288), (32, 64), 64),
        "4e": (528, 256, (160, 320), (32, 128), 128),
    },
    {
        "5a": (832, 256, (160, 320), (32, 128), 128),
        "5b": (832, 384, (192, 384), (48, 128), 128),
    },
]


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs), nn.ReLU(inplace=True))


def _lrn() -> LocalResponseNorm:
    # The paper gives no LRN constants; these are those of the authors' Caffe model (bvlc_googlenet).
    return LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def _caffe_maxpool() -> nn.MaxPool2d:
    # Caffe rounds pooling output sizes up; ceil_mode gives its map sizes (112 -> 56 -> 28 -> 14 -> 7).
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def _aux_head(in_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    # Section 5 of the paper: avg pool 5x5/3 (14x14 -> 4x4), 1x1 conv 128 + ReLU, FC 1024 + ReLU,
    # dropout 0.7, linear classifier.
    return nn.Sequential(OrderedDict(
        avgpool=nn.AvgPool2d(5, stride=3),
        conv=_conv_relu(in_channels, 128, 1),
        flatten=nn.Flatten(),
        fc1=nn.Linear(128 * 4 * 4, 1024),
        relu=nn.ReLU(inplace=True),
        dropout=nn.Dropout(dropout),
        fc2=nn.Linear(1024, num_classes),
    ))


class Inception(nn.Module):
    """The book's Inception block: ``c1`` 1x1; ``c2`` = (1x1, 3x3); ``c3`` = (1x1, 5x5); ``c4`` after a 3x3 max pool.

    Output channels: ``c1 + c2[1] + c3[1] + c4``; height and width are kept.
    """

    def __init__(self, in_channels, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.p1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.p2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.p2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.p3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.p3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


class GoogLeNetOutputs(NamedTuple):
    """What :class:`GoogLeNet` returns in training mode with auxiliary heads: the main logits first."""

    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


class GoogLeNet(ModelBase):
    """GoogLeNet as the paper builds it (Table 1), with LRN and the two auxiliary classifiers.

    Output contract: in training mode with ``aux_logits=True`` ``forward`` returns
    ``GoogLeNetOutputs(logits, aux1, aux2)`` (aux1 taps inception 4a, aux2 taps 4d)
    and the training loss is ``loss(logits) + aux_loss_weight * (loss(aux1) + loss(aux2))``
    with ``aux_loss_weight = 0.3``; in eval mode, or with ``aux_logits=False``,
    it returns the logits tensor alone.
    """

    default_image_size = 224
    # The 7x7/1 average pool must see exactly a 7x7 map (1x1 out, 1024 features for fc):
    # that holds for inputs of 223..254 pixels, where the 4a map (14 or 15) also gives the
    # auxiliary heads the 4x4 map their fc1 expects.
    min_input_size = 223
    max_input_size = 254
    _aux_taps = {"inception4a": "aux1", "inception4d": "aux2"}

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.4, aux_dropout: float = 0.7):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv1 = _conv_relu(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = _caffe_maxpool()
        self.lrn1 = _lrn()
        self.conv2 = _conv_relu(64, 64, 1)
        self.conv3 = _conv_relu(64, 192, 3, padding=1)
        self.lrn2 = _lrn()
        self.maxpool2 = _caffe_maxpool()
        for i, stage in enumerate(_INCEPTION_STAGES):
            for name, cfg in stage.items():
                self.add_module(f"inception{name}", Inception(*cfg))
            if i < len(_INCEPTION_STAGES) - 1:
                self.add_module(f"maxpool{i + 3}", _caffe_maxpool())
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.aux1 = self.aux2 = None
        if aux_logits:
            self.aux1 = _aux_head(512, num_classes, aux_dropout)
            self.aux2 = _aux_head(528, num_classes, aux_dropout)
            self.aux_loss_weight = 0.3

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.named_children() if n not in ("aux1", "aux2")]

    def _trunk(self) -> list[tuple[str, nn.Module]]:
        stages = self.stages()
        return stages[: [n for n, _ in stages].index("avgpool")]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for _, layer in self._trunk():
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.flatten(self.avgpool(x)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        self.check_input(x)
        if not (self.training and self.aux1 is not None):
            return self.forward_head(self.forward_features(x))
        aux = {}
        for name, layer in self._trunk():
            x = layer(x)
            if name in self._aux_taps:
                head = self._aux_taps[name]
                aux[head] = getattr(self, head)(x)
        return GoogLeNetOutputs(self.forward_head(x), **aux)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_like(self.fc, num_classes)
        for head in (self.aux1, self.aux2):
            if head is not None:
                head.fc2 = linear_like(head.fc2, num_classes)
        self.num_classes = num_classes


def _googlenet_book(num_classes: int, in_channels: int) -> SequentialModel:
    def inceptions(stage: dict[str, tuple]) -> list[Inception]:
        return [Inception(*cfg) for cfg in stage.values()]

    stage3, stage4, stage5 = _INCEPTION_STAGES
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
                       nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(*inceptions(stage3), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(*inceptions(stage4), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(*inceptions(stage5), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    net = SequentialModel(b1, b2, b3, b4, b5, nn.Linear(1024, num_classes),
                          head_start=5, in_channels=in_channels, num_classes=num_classes)
    # Every pooling pads, and b5 pools adaptively: any size from 1x1 up works.
    net.default_image_size, net.min_input_size, net.max_input_size = 96, 1, None
    return net


@register_model
def googlenet(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> SequentialModel:
    """GoogLeNet as the book builds it (d2l 7.4): b1..b5 + Linear(1024, 10), trained on 96x96 Fashion-MNIST.

    Szegedy et al. 2014, "Going Deeper with Convolutions", arXiv:1409.4842 (CVPR 2015).
    Differs from the paper: no LRN, no auxiliary classifiers, no dropout, padded (not
    ceil-mode) max pools, adaptive average pooling (any input size from 1x1 works).
    It is the book's ``nn.Sequential``, so the book's state dicts load.
    """
    if kwargs:
        raise ValueError(f"googlenet (book form) takes no options {sorted(kwargs)}; "
                         "use googlenet_paper for aux_logits/dropout")
    return _googlenet_book(num_classes, in_channels)


@register_model
def googlenet_paper(*, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                    **kwargs) -> GoogLeNet:
    """GoogLeNet as the paper builds it: 224x224, LRN, inception 3a..5b, two auxiliary classifiers.

    Szegedy et al. 2014, "Going Deeper with Convolutions", arXiv:1409.4842 (CVPR 2015).
    Training mode returns ``GoogLeNetOutputs(logits, aux1, aux2)`` (weight the auxiliary
    losses by ``model.aux_loss_weight`` = 0.3); eval mode returns the logits only;
    ``aux_logits=False`` drops the auxiliary heads. Options: ``dropout`` (0.4), ``aux_dropout`` (0.7).
    LRN constants and ceil-mode pooling follow the authors' Caffe model. Not torchvision's
    ``googlenet``, which adds batch norm after every convolution and has no LRN, so its
    weights do not load here. Fixed 7x7 average pooling: inputs of 223..254 pixels.
    """
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, aux_logits=aux_logits, **kwargs)
