"""Network in Network: the book's form, a batch-normalized variant (ours), and the paper's ImageNet network.

Lin, Chen & Yan, 2013, "Network In Network", arXiv:1312.4400 (ICLR 2014).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import check_size_arg, register_model
from ._base import SequentialModel

__all__ = ["nin_block", "NiN", "NiNPaper"]


def nin_block(
    in_channels: int, out_channels: int, kernel_size: int, strides: int, padding: int, *, batch_norm: bool = False,
    hidden_channels: int | None = None,
) -> nn.Sequential:
    """The book's NiN block: a convolution then two 1x1 convolutions (the "mlpconv"), each with a ReLU.

    ``batch_norm=True`` (ours) puts ``nn.BatchNorm2d`` between each convolution and its ReLU.
    ``hidden_channels`` (default ``out_channels``): the width of the first two convolutions, which the
    paper's ImageNet network makes 1024 in its last block, before the 1x1 convolution to one map per class.
    """
    hidden = out_channels if hidden_channels is None else hidden_channels

    def unit(conv: nn.Conv2d) -> list[nn.Module]:
        return [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]

    return nn.Sequential(
        *unit(nn.Conv2d(in_channels, hidden, kernel_size, strides, padding)),
        *unit(nn.Conv2d(hidden, hidden, kernel_size=1)),
        *unit(nn.Conv2d(hidden, out_channels, kernel_size=1)),
    )


class NiN(SequentialModel):
    """The book's NiN ``nn.Sequential``, layer for layer; see :func:`nin`.

    Its classifier is the last NiN block, which maps 384 channels to one map per
    class before the global average pooling: ``get_classifier`` returns it,
    ``reset_classifier`` rebuilds it, and ``forward_head(x, pre_logits=True)``
    returns what it is fed (the dropout's output, ``(N, 384, H, W)``).
    """

    default_image_size = 224
    min_input_size = 67
    max_input_size = None

    def __init__(self, *layers: nn.Module, head_start: int, in_channels: int, num_classes: int, batch_norm: bool,
                 hidden_channels: int | None = None):
        super().__init__(*layers, head_start=head_start, in_channels=in_channels, num_classes=num_classes)
        self.batch_norm, self.hidden_channels = batch_norm, hidden_channels
        self.classifier_index = len(self) - 3  # then the global average pool and the flatten

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        stop = self.classifier_index if pre_logits else len(self)
        for layer in list(self)[self.head_start : stop]:
            x = layer(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self[self.classifier_index]

    def reset_classifier(self, num_classes: int) -> None:
        check_size_arg("num_classes", num_classes)
        conv = self.get_classifier()[0]
        block = nin_block(conv.in_channels, num_classes, conv.kernel_size, conv.stride, conv.padding,
                          batch_norm=self.batch_norm, hidden_channels=self.hidden_channels)
        self[self.classifier_index] = block.to(conv.weight).train(self.training)
        self.num_classes = num_classes


def _nin(*, batch_norm: bool, num_classes: int, in_channels: int) -> NiN:
    features = [
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0, batch_norm=batch_norm),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2, batch_norm=batch_norm),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1, batch_norm=batch_norm),
        nn.MaxPool2d(3, stride=2),
    ]
    head = [
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1, batch_norm=batch_norm),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    ]
    return NiN(*features, *head, head_start=len(features), in_channels=in_channels, num_classes=num_classes,
               batch_norm=batch_norm)


@register_model
def nin(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> NiN:
    """The book's NiN for Fashion-MNIST resized to 224x224 (d2l, "Network in Network (NiN)").

    After Lin, Chen & Yan, 2013, "Network In Network", arXiv:1312.4400. Four NiN
    blocks with AlexNet's first kernel sizes (11/4, 5, 3, 3), 3/2 max-pools,
    dropout 0.5, then global average pooling of one map per class instead of
    fully connected layers. As in the book, the last block ends in a ReLU, so
    every logit is an average of non-negative values.
    """
    return _nin(batch_norm=False, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def nin_bn(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> NiN:
    """NiN with ``nn.BatchNorm2d`` after every convolution (before its ReLU), otherwise :func:`nin`'s layout.

    Ours, not the paper's: Lin, Chen & Yan, 2013, "Network In Network",
    arXiv:1312.4400, predates batch normalization (Ioffe & Szegedy, 2015,
    arXiv:1502.03167). The convolutions keep their biases so the layout stays
    the book's plus the normalization layers.
    """
    return _nin(batch_norm=True, num_classes=num_classes, in_channels=in_channels, **kwargs)


class NiNPaper(NiN):
    """The ImageNet NiN of the paper's authors; see :func:`nin_paper`."""

    default_image_size = 224
    min_input_size = 39
    max_input_size = None


@register_model
def nin_paper(*, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> NiNPaper:
    """The ImageNet network of Lin, Chen & Yan, 2014, "Network In Network", ICLR (arXiv:1312.4400), as the
    authors released it (their Caffe model ``nin_imagenet``), in the book's ``nn.Sequential`` layout.

    Input 3x224x224. Four mlpconv blocks: 96@11x11/4, 256@5x5 pad 2, 384@3x3 pad 1, each with two 1x1
    convolutions of the same width and then a 3/2 max-pool; dropout 0.5; then the fourth, 1024@3x3 pad 1
    -> 1x1 1024 -> 1x1 ``num_classes``, every convolution followed by a ReLU, and global average pooling
    (the released model's 6x6 average pool). Unlike the book's :func:`nin`, the pools round up as Caffe's do
    (``ceil_mode=True``: 54 -> 27 -> 13 -> 6 at 224 pixels) and the last block is 1024 wide, not one map per
    class throughout: 7,595,176 parameters, 1,100 M multiply-adds for 1000 classes. The classifier
    (``get_classifier``) is the last block, as in :class:`NiN`; ``reset_classifier`` rebuilds it at the same
    width. PyTorch's default initialisation is kept.
    """
    pool = lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True)  # noqa: E731
    features = [
        nin_block(in_channels, 96, kernel_size=11, strides=4, padding=0), pool(),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2), pool(),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1), pool(),
    ]
    head = [
        nn.Dropout(0.5),
        nin_block(384, num_classes, kernel_size=3, strides=1, padding=1, hidden_channels=1024),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    ]
    return NiNPaper(*features, *head, head_start=len(features), in_channels=in_channels, num_classes=num_classes,
                    batch_norm=False, hidden_channels=1024, **kwargs)
