"""VGG: networks built from repeated blocks (d2l 7.2; Simonyan & Zisserman 2014).

Book form: ``vgg_block`` and ``vgg(conv_arch)`` exactly as the book writes
them, so a state dict saved by the book's code loads into ``vgg11_book``.
Paper form: configurations A/B/D/E as lists fed to one ``make_layers``, with
torchvision's module names (``features``, ``avgpool``, ``classifier``) so
``torchvision.models.vgg16().state_dict()`` loads with ``strict=True``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from ..registry import register_model
from ._base import ModelBase, SequentialModel, linear_like

__all__ = ["vgg_block", "vgg", "make_layers", "VGG", "cfgs"]

# The book's VGG-11 convolutional architecture: (num_convs, out_channels) per block.
BOOK_CONV_ARCH: tuple[tuple[int, int], ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))

# The paper's configurations (Table 1): an int is a 3x3 conv with that many channels, "M" a 2x2/2 max-pool.
cfgs: dict[str, list[Union[str, int]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """The book's VGG block: ``num_convs`` 3x3 convs (padding 1) with ReLU, then a 2x2/2 max-pool."""
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(conv_arch: Sequence[tuple[int, int]], *, in_channels: int = 1, num_classes: int = 10) -> SequentialModel:
    """The book's ``vgg(conv_arch)``: the VGG blocks, then the 3-layer classifier on a flattened 7x7 map.

    The book hardcodes ``in_channels=1`` and 10 classes; here they are keywords with those defaults.
    The indices are the book's (blocks, Flatten, Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear),
    so the book's state dicts load. Each block halves the image, and the classifier needs exactly 7x7
    after the last one: with ``n`` blocks the input side must lie in ``[7 * 2**n, 8 * 2**n - 1]``.
    """
    if not conv_arch:
        raise ValueError("vgg needs at least one (num_convs, out_channels) pair in conv_arch, got none")
    image_channels = in_channels
    conv_blks = []
    for num_convs, out_channels in conv_arch:
        conv_blks.append(vgg_block(num_convs, in_channels, out_channels))
        in_channels = out_channels
    net = SequentialModel(
        *conv_blks, nn.Flatten(),
        nn.Linear(out_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
        head_start=len(conv_blks),
        in_channels=image_channels,
        num_classes=num_classes,
    )
    reduction = 2 ** len(conv_arch)
    net.default_image_size = net.min_input_size = 7 * reduction
    net.max_input_size = 8 * reduction - 1
    return net


def make_layers(cfg: Sequence[Union[str, int]], batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """The paper's convolutional part from a configuration list (torchvision's ``make_layers``)."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            continue
        conv2d = nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1)
        if batch_norm:
            layers += [conv2d, nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
        else:
            layers += [conv2d, nn.ReLU(inplace=True)]
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(ModelBase):
    """The paper's VGG with torchvision's layout: ``features`` -> ``avgpool`` (7x7) -> ``classifier``.

    The adaptive pool (torchvision's addition; the paper tests at 224, or turns the FC layers into
    convolutions) lets any input of at least 32x32 reach the 7x7 map the classifier expects.
    """

    default_image_size = 224
    min_input_size = 32  # five 2x2/2 max-pools need at least 32 pixels to leave a 1x1 map

    def __init__(
        self,
        cfg: Sequence[Union[str, int]],
        *,
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        channels = [v for v in cfg if v != "M"][-1]
        self.features = make_layers(cfg, batch_norm=batch_norm, in_channels=in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = nn.Flatten()  # no parameters, so torchvision's state dicts still load
        self.classifier = nn.Sequential(
            nn.Linear(int(channels) * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.avgpool(x))
        return self.classifier[:-1](x) if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier[-1] = linear_like(self.classifier[-1], num_classes)
        self.num_classes = num_classes


def _vgg(cfg: str, batch_norm: bool, **kwargs) -> VGG:
    return VGG(cfgs[cfg], batch_norm=batch_norm, **kwargs)


@register_model
def vgg11_book(*, num_classes: int = 10, in_channels: int = 1, ratio: int = 4, **kwargs) -> SequentialModel:
    """The book's VGG-11 (d2l 7.2): ``vgg(conv_arch)`` with every channel count divided by ``ratio``.

    Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, ch. 7.2 (arXiv:2106.11342); the network is
    configuration A of Simonyan & Zisserman 2014 (arXiv:1409.1556). The book trains it with ratio 4 on
    Fashion-MNIST resized to 224x224; ``ratio=1`` gives the full-width network. Unlike the paper it has
    no adaptive pooling, so it takes only 224 to 255 pixels.
    """
    if not isinstance(ratio, int) or not 1 <= ratio <= 64:
        raise ValueError(f"vgg11_book: ratio divides the channel counts (64..512) and must be an int in 1..64, got {ratio!r}")
    small_conv_arch = [(pair[0], pair[1] // ratio) for pair in BOOK_CONV_ARCH]
    return vgg(small_conv_arch, in_channels=in_channels, num_classes=num_classes, **kwargs)


@register_model
def vgg11(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11, configuration A of Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for
    Large-Scale Image Recognition" (arXiv:1409.1556, ICLR 2015). torchvision's layout and init."""
    return _vgg("A", False, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg11_bn(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11 (configuration A, Simonyan & Zisserman 2014, arXiv:1409.1556) with batch norm after every
    conv: torchvision's variant; batch norm (Ioffe & Szegedy 2015) postdates the paper."""
    return _vgg("A", True, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg13(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13, configuration B of Simonyan & Zisserman 2014 (arXiv:1409.1556). torchvision's layout."""
    return _vgg("B", False, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg13_bn(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13 (configuration B, Simonyan & Zisserman 2014, arXiv:1409.1556) with batch norm (torchvision's)."""
    return _vgg("B", True, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg16(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16, configuration D of Simonyan & Zisserman 2014 (arXiv:1409.1556). torchvision's layout.

    Configuration C (1x1 convs in the last three blocks) is not built: torchvision has no weights for it.
    """
    return _vgg("D", False, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg16_bn(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16 (configuration D, Simonyan & Zisserman 2014, arXiv:1409.1556) with batch norm (torchvision's)."""
    return _vgg("D", True, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg19(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19, configuration E of Simonyan & Zisserman 2014 (arXiv:1409.1556). torchvision's layout."""
    return _vgg("E", False, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg19_bn(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19 (configuration E, Simonyan & Zisserman 2014, arXiv:1409.1556) with batch norm (torchvision's)."""
    return _vgg("E", True, num_classes=num_classes, in_channels=in_channels, **kwargs)
