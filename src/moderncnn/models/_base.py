"""The small API every moderncnn model shares (after timm).

``forward(x) == forward_head(forward_features(x))``; ``get_classifier`` and
``reset_classifier`` swap the last layer; ``stages()`` lists the top-level
blocks in the order the book's shape walk visits them. Every model checks its
input before running, so a wrong channel count or a too-small image gives an
error naming the model and the fix rather than a shape error deep inside.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import check_size_arg

__all__ = ["ModelBase", "SequentialModel", "FcClassifier", "linear_like"]


def linear_like(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A fresh classifier with ``old``'s input width, device and dtype (for ``reset_classifier``)."""
    check_size_arg("num_classes", num_classes)
    return nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)


class ModelBase(nn.Module):
    #: Side of the square image the model is built for (the book's or paper's size).
    default_image_size: int = 224
    #: Smallest height/width the network accepts.
    min_input_size: int = 1
    #: Largest height/width, for networks that flatten a fixed-size feature map (else None).
    max_input_size: int | None = None
    in_channels: int
    num_classes: int

    @property
    def model_name(self) -> str:
        return self.__dict__.get("_model_name", type(self).__name__.lower())

    @model_name.setter
    def model_name(self, value: str) -> None:
        self.__dict__["_model_name"] = value

    @property
    def default_input_size(self) -> tuple[int, int, int]:
        return (self.in_channels, self.default_image_size, self.default_image_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Top-level blocks whose composition is ``forward`` (in eval mode)."""
        return list(self.named_children())

    def check_input(self, x: torch.Tensor) -> None:
        name = self.model_name
        if x.dim() != 4:
            raise ValueError(f"{name} expects a batch of images shaped (N, C, H, W), got shape {tuple(x.shape)}")
        c, h, w = x.shape[1:]
        if c != self.in_channels:
            raise ValueError(
                f"{name} was built for {self.in_channels}-channel images, got {c} channels: "
                f"build it with in_channels={c}"
            )
        lo, hi = self.min_input_size, self.max_input_size
        if min(h, w) < lo or (hi is not None and max(h, w) > hi):
            if hi is None:
                need = f"at least {lo}x{lo} pixels"
            elif hi == lo:
                need = f"exactly {lo}x{lo} pixels (it flattens a fixed-size feature map)"
            else:
                need = f"{lo}x{lo} to {hi}x{hi} pixels (it flattens a fixed-size feature map)"
            raise ValueError(
                f"{name} needs images of {need}, got {h}x{w}: "
                f"resize them (e.g. to {self.default_image_size}x{self.default_image_size})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))


class FcClassifier:
    """``get_classifier`` / ``reset_classifier`` for a model whose last layer is ``self.fc``, a Linear."""

    fc: nn.Linear
    num_classes: int

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_like(self.fc, num_classes)
        self.num_classes = num_classes


class SequentialModel(ModelBase, nn.Sequential):
    """A book-form network: literally the book's ``nn.Sequential``.

    Keeping the book's layer order and indices means a state dict saved by the
    book's own code loads into ours. ``head_start`` is the index of the first
    layer of the head (the layers after the feature extractor); the last layer
    is the classifier.
    """

    def __init__(self, *layers: nn.Module, head_start: int, in_channels: int, num_classes: int):
        nn.Sequential.__init__(self, *layers)
        self.head_start = head_start
        self.in_channels = in_channels
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[: self.head_start]:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        head = list(self)[self.head_start :]
        for layer in head[:-1] if pre_logits else head:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ModelBase.forward(self, x)

    def get_classifier(self) -> nn.Module:
        return self[-1]

    def reset_classifier(self, num_classes: int) -> None:
        last = self[-1]
        if not isinstance(last, nn.Linear):
            raise NotImplementedError(f"{self.model_name}: override reset_classifier (its last layer is {type(last).__name__})")
        self[len(self) - 1] = linear_like(last, num_classes)
        self.num_classes = num_classes
