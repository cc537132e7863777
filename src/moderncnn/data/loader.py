"""The fast path: a whole data set as one uint8 tensor on the training device, batched and transformed there.

Per batch: gather (a shuffled index, or a slice), random crop + flip on the uint8 batch, scale to [0, 1],
bilinear resize, normalise, channels_last -- a handful of kernels on the whole batch, no per-sample Python,
no worker processes and no host sync, so the device never waits for the data (after airbench).

Resizing. The book resizes each PIL image with torchvision ``Resize`` (PIL bilinear) and rounds the result to
uint8 before ``ToTensor``. When upsampling, PIL's bilinear filter is the triangle kernel at half-pixel
centres, clamped at the borders: the same weights as ``F.interpolate(mode="bilinear", align_corners=False)``.
So the two differ only by rounding: PIL resamples in two 1-D passes, rounding to uint8 after each (at most
0.5/255 apiece), and we keep float32. On real Fashion-MNIST images at 28 -> 224 (and 96, 227) the largest
difference is 1/255 and the mean 0.17/255 (tests/test_data.py checks this bound). Downsampling uses
``antialias=True``, which is what PIL does too.

Augmentation is applied at the stored resolution, before resizing: a random crop with 4-pixel zero padding
(as torchvision ``RandomCrop(size, padding=4)``) and a horizontal flip, both done by one gather on the whole
batch. At a resize of s/H the shift is therefore 4 * s/H output pixels: the padding scales with the resize.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .base import ImageDataset

__all__ = ["DeviceLoader", "resize_batch", "augment_batch", "CROP_PADDING"]

CROP_PADDING = 4
_SUBSET_SEED = 0


def _mix_seed(*values: int) -> int:
    """A 63-bit seed that is a pure function of ``values`` (unlike a sum, (1, 0) and (0, 1) differ)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch (B, C, H, W) to (size, size); antialiased only when shrinking."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < min(x.shape[-2:]))


def augment_batch(x: torch.Tensor, padding: int = CROP_PADDING,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip of every image of a batch, in one gather.

    Works on any dtype (uint8 is cheapest); random numbers come from ``generator`` on ``x``'s device.
    ``padding=0``: the flip only.
    """
    b, c, h, w = x.shape
    if padding == 0:  # a flip only: no gather needed
        flip = torch.randint(0, 2, (b, 1, 1, 1), device=x.device, generator=generator).bool()
        return torch.where(flip, x.flip(3), x)
    shifts = torch.randint(0, 2 * padding + 1, (2, b, 1), device=x.device, generator=generator)
    flip = torch.randint(0, 2, (b, 1), device=x.device, generator=generator).bool()
    rows = shifts[0] + torch.arange(h, device=x.device)
    cols = shifts[1] + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    padded = F.pad(x, (padding, padding, padding, padding))
    batch, channel = torch.arange(b, device=x.device), torch.arange(c, device=x.device)
    return padded[batch[:, None, None, None], channel[:, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def _balanced_order(labels: torch.Tensor) -> torch.Tensor:
    """A fixed permutation whose every prefix is as class-balanced as the data allows (round-robin over classes)."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SUBSET_SEED))
    lab = labels[perm]
    sorted_lab, by_class = torch.sort(lab, stable=True)
    counts = torch.bincount(lab)
    rank = torch.empty_like(lab)
    rank[by_class] = torch.arange(len(lab)) - (torch.cumsum(counts, 0) - counts)[sorted_lab]
    return perm[torch.sort(rank, stable=True).indices]


class DeviceLoader:
    """Iterates (x, y) batches of a whole ImageDataset held as ONE uint8 tensor on ``device``.

    x: float32 (B, C, H, W) in [0, 1] (then normalised if ``normalize=(mean, std)``), on ``device``,
    channels_last if asked; H = W = ``resize`` if given. y: int64 (B,), on ``device``.
    The shuffle order and the augmentation are pure functions of (seed, epoch); each ``iter()`` uses the
    current epoch and then advances it by one, so call :meth:`set_epoch` to replay or resume an epoch.
    ``subset=n`` keeps the first n examples of a fixed class-balanced permutation (seed-independent;
    at most the whole set). ``shard=(rank, shards)``: of every batch, only this process's contiguous share
    (the shares differ by one example at most; torchrun training, see :mod:`moderncnn.distributed`); a
    batch whose share is empty is skipped here, or on every shard with ``equal_steps=True`` (then all
    shards yield as many batches, which DistributedDataParallel needs).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, device: str | torch.device = "cpu",
                 shuffle: bool = False, drop_last: bool = False, resize: int | None = None,
                 augment: bool = False, normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 channels_last: bool = False, subset: int | None = None, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), equal_steps: bool = False, crop_padding: int = CROP_PADDING):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if resize is not None and resize < 1:
            raise ValueError(f"resize must be a positive number of pixels, got {resize}")
        if subset is not None and subset < 1:
            raise ValueError(f"subset must be a positive number of examples, got {subset}")
        rank, shards = shard
        if not 0 <= rank < shards:
            raise ValueError(f"shard must be (rank, shards) with 0 <= rank < shards, got {shard}")
        self.rank, self.shards, self.equal_steps = rank, shards, equal_steps
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle, self.drop_last, self.augment, self.channels_last = shuffle, drop_last, augment, channels_last
        self.seed, self.crop_padding = seed, crop_padding
        self.epoch = 0
        images, labels = dataset.images, dataset.labels
        if subset is not None and subset < len(dataset):
            keep = _balanced_order(labels)[:subset].sort().values
            images, labels = images[keep], labels[keep]
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.num_examples = len(self.labels)
        channels, height, width = self.images.shape[1:]
        self.image_size = resize if resize is not None else height
        self.resize = resize
        self.mean = self.std = None
        if normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in normalize)
            if len(mean) not in (1, channels) or len(std) not in (1, channels) or (std <= 0).any():
                raise ValueError(f"normalize must be (mean, std) with 1 or {channels} values each and std > 0, "
                                 f"got {normalize}")
            self.mean, self.std = (v.view(1, -1, 1, 1).to(self.device) for v in (mean, std))

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch``: its order and augmentation depend only on (seed, epoch)."""
        self.epoch = epoch

    def _share(self, m: int) -> tuple[int, int]:
        """This shard's [start, end) within a batch of ``m`` examples."""
        return m * self.rank // self.shards, m * (self.rank + 1) // self.shards

    def share(self, m: int) -> int:
        """How many of a batch of ``m`` examples this shard gets."""
        lo, hi = self._share(m)
        return hi - lo

    def _bounds(self) -> Iterator[tuple[int, int]]:
        """[start, end) in the epoch's order of each batch, or of this shard's share of it."""
        n, b = self.num_examples, self.batch_size
        for i in range(n // b if self.drop_last else math.ceil(n / b)):
            lo, hi = i * b, min(i * b + b, n)
            if self.equal_steps and hi - lo < self.shards:  # some shard would have nothing
                continue
            lo, hi = (lo + d for d in self._share(hi - lo))
            if hi > lo:
                yield lo, hi

    def __len__(self) -> int:
        return sum(1 for _ in self._bounds())

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch on the device -> the model's input, as each iteration makes it."""
        if self.augment:
            x = augment_batch(x, self.crop_padding, generator)
        x = x.float().div_(255)
        if self.resize is not None:
            x = resize_batch(x, self.resize)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = None
        if self.augment:
            # each shard its own draws: the same ones would shift every shard's j-th image alike
            key = (self.seed, epoch, 1) + ((self.rank,) if self.shards > 1 else ())
            generator = torch.Generator(device=self.device).manual_seed(_mix_seed(*key))
        order = None
        if self.shuffle:
            # drawn on the CPU so the order is the same on every device
            cpu = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            order = torch.randperm(self.num_examples, generator=cpu).to(self.device, non_blocking=True)
        for lo, hi in self._bounds():
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            yield self.transform(x, generator), y
