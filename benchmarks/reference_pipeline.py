"""The book's pipeline, as d2l runs it: the baseline moderncnn is measured against.

d2l's ``load_data_fashion_mnist`` + ``train_ch6``: torchvision ``FashionMNIST``
with ``Resize`` + ``ToTensor`` per image, ``DataLoader(num_workers=4)``, an fp32
step, and a ``float()`` host sync on every batch (d2l's ``Accumulator`` and
``accuracy``). Nothing here is used by the library; it exists to be timed.
"""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def torchvision_root(gz_dir: Path, work_dir: Path) -> Path:
    """Lay the .gz files out as torchvision's FashionMNIST expects them (raw/, uncompressed)."""
    raw = work_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (raw / name).exists():
            with gzip.open(gz_dir / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return work_dir


def book_train_iter(root: Path, batch_size: int, resize: int | None, num_workers: int = 4) -> DataLoader:
    trans = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    train = torchvision.datasets.FashionMNIST(root=str(root), train=True, transform=transforms.Compose(trans), download=False)
    return DataLoader(train, batch_size, shuffle=True, num_workers=num_workers, persistent_workers=num_workers > 0)


def book_init(model: nn.Module) -> None:
    def init_weights(m):
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)

    model.apply(init_weights)


def endless(loader):
    """The loader's batches, epoch after epoch: the timed runs may be longer than one epoch."""
    while True:
        yield from loader


def time_book_steps(model: nn.Module, train_iter: DataLoader, lr: float, device: torch.device,
                    num_batches: int, warmup: int = 2) -> tuple[float, float]:
    """Run train_ch6's inner loop for ``warmup + num_batches`` batches.

    Returns (end-to-end examples/sec, the book's examples/sec): the first counts
    everything between batches, data loading included; the second is what
    train_ch6 prints (its timer runs only around the step).
    """
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    step_time = examples = 0.0
    it = endless(train_iter)
    for i in range(warmup + num_batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        X, y = next(it)
        t0 = time.perf_counter()
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = model(X)
        l = loss(y_hat, y)
        l.backward()
        optimizer.step()
        with torch.no_grad():  # d2l's Accumulator.add: float() on each value, a host sync per batch
            float(l * X.shape[0]), float((y_hat.argmax(axis=1).type(y.dtype) == y).type(y.dtype).sum()), X.shape[0]
        if i >= warmup:
            step_time += time.perf_counter() - t0
            examples += X.shape[0]
    wall = time.perf_counter() - start
    return examples / wall, examples / step_time
