"""Our LocalResponseNorm is PyTorch's, computed so that it stays in bf16 on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.layers import LocalResponseNorm


@pytest.mark.parametrize("size, channels", [(5, 96), (5, 3), (4, 7), (1, 4), (7, 10)])
def test_local_response_norm_is_pytorchs(size, channels):
    torch.manual_seed(0)
    ours, theirs = LocalResponseNorm(size, 1e-2, 0.75, 2.0), nn.LocalResponseNorm(size, 1e-2, 0.75, 2.0)
    assert isinstance(ours, nn.LocalResponseNorm)
    x = (torch.randn(2, channels, 5, 6, dtype=torch.float64) * 3).requires_grad_()
    grad = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(torch.autograd.grad(ours(x), x, grad)[0], torch.autograd.grad(theirs(x), x, grad)[0])
    x3 = torch.randn(2, channels, 9, dtype=torch.float64)  # other ranks: PyTorch's own path
    torch.testing.assert_close(ours(x3), theirs(x3))
    with torch.autocast("cpu", torch.bfloat16):  # stays in bf16 (PyTorch's avg_pool3d route returns fp32)
        y = ours(x.detach().float().to(memory_format=torch.channels_last).bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), theirs(x.detach().float()), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["alexnet_paper", "googlenet_paper"])
def test_paper_forms_use_it(name):
    norms = [m for m in moderncnn.create_model(name).modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(norms) == 2 and all(type(m) is LocalResponseNorm for m in norms)
