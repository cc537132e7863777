"""Data the tests share: a tiny data set in Fashion-MNIST's own file format (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moderncnn.data import write_idx


def write_fashion_idx(root: Path, train: int, test: int) -> Path:
    """``train``/``test`` 28x28 images in the IDX files Fashion-MNIST ships as, the label drawn as a bright row."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("t10k", test)):
        labels = (torch.arange(n) % 10).to(torch.uint8)
        images = (torch.rand(n, 28, 28, generator=g) * 100).to(torch.uint8)
        images[torch.arange(n), 2 * labels.long() + 4] = 255
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def assert_same_as_conv2d(layer: torch.nn.Module, conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    """``layer`` (with ``conv``'s weight and bias) gives ``conv``'s outputs and gradients on ``x``."""
    y = conv(x)
    grad = torch.randn_like(y)
    torch.testing.assert_close(layer(x), y)
    for ours, theirs in zip(torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), grad),
                            torch.autograd.grad(y, (x, conv.weight, conv.bias), grad)):
        torch.testing.assert_close(ours, theirs)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No data from the user's cache or $MODERNCNN_DATA, and no download can start (a module opts in with
    ``from fixtures import offline`` and ``pytestmark = pytest.mark.usefixtures("offline")``)."""
    monkeypatch.setenv("MODERNCNN_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import moderncnn.data.datasets as datasets

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(datasets, "_download", no_network)
    monkeypatch.setattr(datasets, "_download_cifar10", no_network)
