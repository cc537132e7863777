"""What every data set loader returns: a whole split in memory, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DataError", "ImageDataset"]


class DataError(ValueError):
    """Missing, corrupt or inconsistent data; the one-line message names the file and the fix."""


@dataclass
class ImageDataset:
    """One split of a data set, held whole: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,), on CPU.

    ``source`` says where it came from (a directory, "downloaded to DIR", or the embedded sample) and
    ``is_sample`` is True for the embedded sample; ``root`` is the folder it was read from and ``files`` the
    files (None and empty for the sample and for data made in memory): all belong in a run's metadata.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    source: str
    is_sample: bool = False
    root: str | None = None
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise DataError(f"{self.name}: labels must be int64 ({len(self.images)},), got {self.labels.dtype} "
                            f"{tuple(self.labels.shape)}")
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]
