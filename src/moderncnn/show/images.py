"""Images in and out of the pictures: an image file or tensor made into the model's input as its run prepared
it, and tensors laid out as tiles for ``imshow``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..checkpoint import Preprocessing

__all__ = ["preprocessing_of", "read_image", "normalise", "class_names", "mosaic", "scaled", "display_image"]


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """The run's preprocessing (a trained or loaded model carries it), else the model's own defaults."""
    prep = getattr(model, "preprocessing", None)
    if prep is not None:
        return prep
    size = getattr(model, "default_image_size", 224)
    return Preprocessing(channels=getattr(model, "in_channels", 3), size=size,
                         classes=tuple(str(i) for i in range(getattr(model, "num_classes", 0))))


def class_names(model: nn.Module) -> list[str]:
    prep = preprocessing_of(model)
    return list(prep.classes) or [str(i) for i in range(getattr(model, "num_classes", 0))]


def read_image(model: nn.Module, image: str | Path | torch.Tensor) -> torch.Tensor:
    """One image as a (1, C, S, S) float batch in [0, 1] at the size the model was trained at.

    ``image``: a file (read as :func:`~moderncnn.predict` reads it: any format Pillow opens, converted to the
    model's channels), or a uint8 / [0, 1] float tensor (C, H, W) or (1, C, H, W).
    """
    from ..data import resize_batch
    from ..evaluate import read_images

    prep = preprocessing_of(model)
    if isinstance(image, (str, Path)):
        return read_images([image], prep.channels, prep.size, prep.native)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a file path or a tensor, got {type(image).__name__}")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != prep.channels:
        raise ValueError(f"image must be one ({prep.channels}, H, W) image, got shape {tuple(image.shape)}")
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return resize_batch(x, prep.size)


def normalise(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in [0, 1] normalised as in training, on the model's device."""
    prep = preprocessing_of(model)
    device = next(model.parameters()).device
    if prep.normalize is not None:
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in prep.normalize)
        x = (x - mean) / std
    return x.to(device)


def display_image(x: torch.Tensor):
    """A (C, H, W) image in [0, 1] as imshow takes it: (H, W) for grey, (H, W, 3) for colour."""
    x = x.detach().float().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def mosaic(tiles: torch.Tensor, columns: int, pad: int = 1, fill: float = float("nan")) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) tiles as one (rows*H, columns*W[, 3]) image with ``pad`` pixels between them.

    The gaps are NaN by default, which imshow leaves blank (the axes' background), so no tile value is faked.
    """
    n, h, w = tiles.shape[:3]
    rows = -(-n // columns)
    out = torch.full((rows * (h + pad) - pad, columns * (w + pad) - pad, *tiles.shape[3:]), fill)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return out


def scaled(t: torch.Tensor, symmetric: bool = False, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Each tile to [0, 1] over ``dims``: min to max, or (``symmetric``) -max|t| to max|t|, so 0 is mid-grey."""
    if symmetric:
        m = t.abs().amax(dim=tuple(dims), keepdim=True).clamp_min(1e-12)
        return (t / m + 1) / 2
    lo = t.amin(dim=tuple(dims), keepdim=True)
    hi = t.amax(dim=tuple(dims), keepdim=True)
    return (t - lo) / (hi - lo).clamp_min(1e-12)
