"""Average pooling over non-overlapping patches with the matmul backward: nn.AvgPool2d's numbers, computed otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import moderncnn
from moderncnn.layers import PatchAvgPool2d, patch_poolable, use_patch_pool

with torch.device("meta"):  # the structure is all that is asked: no weights to draw
    POOLED = [name for name in moderncnn.list_models()
              if any(patch_poolable(m) for m in moderncnn.create_model(name, in_channels=1).modules())]


def _outputs_and_gradients(pool: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None):
    x = x.detach().requires_grad_()
    y = pool(x)
    grad = torch.randn_like(y) if grad is None else grad
    (gx,) = torch.autograd.grad(y, x, grad)
    return y, gx, grad


@pytest.mark.parametrize("kernel, stride, size", [
    (2, 2, (28, 28)), (2, None, (10, 6)), (3, 3, (9, 12)), ((2, 3), (2, 3), (8, 9)), (4, 4, (4, 8)),
    (2, 2, (7, 9)),  # the window does not divide the size: the plain path, which drops the remainder
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_outputs_and_gradients_as_avg_pool2d(kernel, stride, size, channels_last):
    torch.manual_seed(0)
    plain = nn.AvgPool2d(kernel, stride)
    ours = nn.AvgPool2d(kernel, stride)
    assert use_patch_pool(ours).modules() == [ours] and type(ours) is PatchAvgPool2d
    x = torch.randn(3, 5, *size, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y, gx, grad = _outputs_and_gradients(plain, x)
    y2, gx2, _ = _outputs_and_gradients(ours, x, grad)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)
    torch.testing.assert_close(gx2, gx)
    assert gx2.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_are_the_same_numbers_in_low_precision(dtype, kernel, channels_last):
    # what the trainer runs: each output gradient divided by the window's area as avg_pool2d rounds it, copied
    torch.manual_seed(0)
    x = torch.rand(4, 6, 6 * kernel, 4 * kernel, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    ours = nn.AvgPool2d(kernel)
    use_patch_pool(ours)
    y, gx, grad = _outputs_and_gradients(nn.AvgPool2d(kernel), x)
    y2, gx2, _ = _outputs_and_gradients(ours, x, grad)
    assert torch.equal(y2, y) and torch.equal(gx2, gx)


def test_without_gradients_it_is_the_plain_layer():
    pool = nn.AvgPool2d(2)
    use_patch_pool(pool)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(pool(x), nn.functional.avg_pool2d(x, 2))
    assert pool(x).grad_fn is None and pool(torch.rand(3, 8, 8)).shape == (3, 4, 4)  # unbatched too


def test_only_pooling_over_non_overlapping_patches_is_converted():
    keep = [nn.AvgPool2d(2, stride=1), nn.AvgPool2d(3, stride=2), nn.AvgPool2d(2, padding=1),
            nn.AvgPool2d(2, ceil_mode=True), nn.AvgPool2d(2, divisor_override=3), nn.AdaptiveAvgPool2d(1),
            nn.MaxPool2d(2), type("MyPool", (nn.AvgPool2d,), {})(2)]
    converted = [nn.AvgPool2d(2), nn.AvgPool2d(3, 3), nn.AvgPool2d((2, 3)), nn.AvgPool2d(2, 2, count_include_pad=False)]
    model = nn.Sequential(*keep, *converted)
    assert [patch_poolable(m) for m in model] == [False] * len(keep) + [True] * len(converted)
    keys = list(model.state_dict())
    done = use_patch_pool(model)
    assert done.modules() == converted and list(model.state_dict()) == keys
    done.restore()
    assert all(type(m) is nn.AvgPool2d for m in converted)


def test_the_book_models_with_such_pooling():
    assert {"lenet", "lenet_bn", "lenet_bn_scratch", "densenet_book"} <= set(POOLED)


@pytest.mark.parametrize("name", POOLED)
def test_every_model_computes_the_same_with_the_matmul_backward(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name, in_channels=1).double()
    size = model.min_input_size if model.max_input_size is not None else max(model.min_input_size, 32)
    x = torch.rand(2, 1, size, size, dtype=torch.float64)
    model.train()
    plain = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    converted = use_patch_pool(model)
    assert len(converted)
    ours = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    converted.restore()
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b)
