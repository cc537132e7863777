"""The book's from-scratch batch norm against nn.BatchNorm1d/2d (float64, several steps)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from moderncnn.layers import BatchNorm, batch_norm

SHAPES = {2: (8, 5), 4: (4, 3, 5, 6)}
STEPS = 4


def _pair(num_dims: int, unbiased: bool) -> tuple[BatchNorm, nn.Module]:
    """Ours and PyTorch's, with the same non-trivial gamma/beta, in float64."""
    c = SHAPES[num_dims][1]
    ours = BatchNorm(c, num_dims, unbiased=unbiased).double()
    ref = (nn.BatchNorm1d if num_dims == 2 else nn.BatchNorm2d)(c, eps=1e-5, momentum=0.1).double()
    gamma, beta = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(gamma), ref.bias.copy_(beta)
        ours.gamma.copy_(gamma.view_as(ours.gamma)), ours.beta.copy_(beta.view_as(ours.beta))
    return ours, ref


def _batches(num_dims: int) -> list[torch.Tensor]:
    # shifted and scaled so the running statistics move away from 0 and 1
    return [torch.randn(SHAPES[num_dims], dtype=torch.float64) * (1 + step) + step for step in range(STEPS)]


def _stat_dims(num_dims: int) -> tuple[int, ...]:
    return (0,) if num_dims == 2 else (0, 2, 3)


@pytest.mark.parametrize("num_dims", [2, 4])
@pytest.mark.parametrize("unbiased", [True, False])
def test_training_outputs_gradients_and_running_mean_match_torch(num_dims, unbiased):
    torch.manual_seed(0)
    ours, ref = _pair(num_dims, unbiased)
    for x in _batches(num_dims):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), ref(x2)
        torch.testing.assert_close(y1, y2)
        w = torch.randn_like(y1)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.gamma.grad.flatten(), ref.weight.grad)
    torch.testing.assert_close(ours.beta.grad.flatten(), ref.bias.grad)
    # the book's 0.9 is PyTorch's momentum=0.1
    torch.testing.assert_close(ours.moving_mean.flatten(), ref.running_mean)


@pytest.mark.parametrize("num_dims", [2, 4])
def test_unbiased_running_var_and_eval_match_torch_exactly(num_dims):
    torch.manual_seed(1)
    ours, ref = _pair(num_dims, unbiased=True)
    for x in _batches(num_dims):
        ours(x), ref(x)
    torch.testing.assert_close(ours.moving_var.flatten(), ref.running_var)
    ours.eval(), ref.eval()
    x = torch.randn(SHAPES[num_dims], dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("num_dims", [2, 4])
def test_book_running_var_uses_the_biased_batch_variance(num_dims):
    torch.manual_seed(2)
    ours, ref = _pair(num_dims, unbiased=False)
    dims = _stat_dims(num_dims)
    expected = torch.ones(SHAPES[num_dims][1], dtype=torch.float64)
    for x in _batches(num_dims):
        ours(x), ref(x)
        expected = 0.9 * expected + 0.1 * x.var(dim=dims, unbiased=False)
    torch.testing.assert_close(ours.moving_var.flatten(), expected)
    assert not torch.allclose(ours.moving_var.flatten(), ref.running_var), "book and PyTorch running_var should differ"

    # the documented difference, after one step from var = 1: the batch terms differ by n / (n - 1)
    ours1, ref1 = _pair(num_dims, unbiased=False)
    x = _batches(num_dims)[-1]
    ours1(x), ref1(x)
    n = x.numel() // x.shape[1]
    torch.testing.assert_close((ref1.running_var - 0.9), (ours1.moving_var.flatten() - 0.9) * n / (n - 1))

    # eval mode normalises with the moving statistics the book kept
    ours.eval()
    x = torch.randn(SHAPES[num_dims], dtype=torch.float64)
    expected_y = F.batch_norm(x, ours.moving_mean.flatten(), ours.moving_var.flatten(), ours.gamma.flatten(),
                              ours.beta.flatten(), training=False, eps=1e-5)
    torch.testing.assert_close(ours(x), expected_y)


def test_function_follows_grad_mode_like_the_book():
    torch.manual_seed(3)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64) + 2
    gamma, beta = torch.ones(1, 3, 1, 1, dtype=torch.float64), torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    mm, mv = torch.zeros_like(gamma), torch.ones_like(gamma)
    with torch.no_grad():
        y, new_mm, new_mv = batch_norm(x, gamma, beta, mm, mv, eps=1e-5, momentum=0.9)
    torch.testing.assert_close(y, x / (1 + 1e-5) ** 0.5)  # prediction mode: moving stats 0 and 1
    assert torch.equal(new_mm, mm) and torch.equal(new_mv, mv)

    y, new_mm, new_mv = batch_norm(x, gamma, beta, mm, mv, eps=1e-5, momentum=0.9)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(new_mm, 0.1 * x.mean(dim=(0, 2, 3), keepdim=True))
    assert not new_mm.requires_grad

    # an explicit mode overrides the grad mode
    with torch.no_grad():
        y_train, *_ = batch_norm(x, gamma, beta, mm, mv, eps=1e-5, momentum=0.9, training=True)
    torch.testing.assert_close(y_train, y.detach())


def test_module_follows_train_eval_not_grad_mode():
    torch.manual_seed(4)
    bn = BatchNorm(3, num_dims=4).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64) + 5
    with torch.no_grad():
        bn(x)  # training mode under no_grad: batch statistics, and the moving ones update
    assert bn.moving_mean.mean() > 0.1
    bn.eval()
    before = bn.moving_mean.clone()
    y = bn(x)  # eval mode with grad enabled: moving statistics, no update
    assert torch.equal(bn.moving_mean, before)
    assert y.mean() > 1  # not re-centred by the batch mean


def test_moving_statistics_are_buffers():
    bn = BatchNorm(4, num_dims=2)
    assert set(bn.state_dict()) == {"gamma", "beta", "moving_mean", "moving_var"}
    assert {n for n, _ in bn.named_parameters()} == {"gamma", "beta"}
    mean_buffer = bn.moving_mean
    bn(torch.randn(5, 4) + 3)
    assert bn.moving_mean is mean_buffer and bn.moving_mean.abs().sum() > 0  # updated in place
    bn.double()
    assert bn.moving_mean.dtype == bn.moving_var.dtype == torch.float64


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="num_dims=2 after nn.Linear"):
        BatchNorm(3, num_dims=2)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="num_dims must be 2"):
        BatchNorm(3, num_dims=3)
    with pytest.raises(ValueError, match="2-D .* or 4-D"):
        batch_norm(torch.randn(2, 3, 4), torch.ones(1), torch.zeros(1), torch.zeros(1), torch.ones(1), 1e-5, 0.9)
    with pytest.raises(ValueError, match="larger batch or unbiased=False"):
        BatchNorm(3, num_dims=2, unbiased=True)(torch.randn(1, 3))


def test_book_form_accepts_a_batch_of_one():
    bn = BatchNorm(3, num_dims=2)
    with torch.no_grad():
        bn.beta.fill_(0.5)
    torch.testing.assert_close(bn(torch.randn(1, 3)), torch.full((1, 3), 0.5))
