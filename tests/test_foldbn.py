"""Batch norm folded into the single-channel convolution before it: batch norm's numbers, computed otherwise."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import moderncnn
from moderncnn.layers import BatchNorm, bn_foldable, foldable_pairs, patch_moments, use_folded_bn, use_row_stacked

with torch.device("meta"):  # the structure is all that is asked: no weights to draw
    FOLDED = [name for name in moderncnn.list_models() if foldable_pairs(moderncnn.create_model(name, in_channels=1))]


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((28, 28), (5, 5), (1, 1), (0, 0)),  # BN LeNet
    ((28, 28), (5, 5), (1, 1), (2, 2)),
    ((17, 23), (3, 5), (2, 1), (1, 2)),  # the last band holds fewer output rows than the others
    ((30, 30), (7, 7), (2, 2), (3, 3)),
    ((9, 9), (2, 2), (2, 2), (0, 0)),  # the padded rows past the last patch are cut
    ((12, 12), (3, 3), (3, 3), (0, 0)),  # no overlap between patches
    ((10, 7), (1, 3), (1, 1), (0, 1)),  # one row a patch
    ((5, 5), (5, 5), (1, 1), (0, 0)),  # one patch an image
])
def test_patch_moments_are_those_of_the_unfolded_patches(size, kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.rand(3, 1, *size, dtype=torch.float64)
    patches = F.unfold(x, kernel, padding=padding, stride=stride).transpose(1, 2).reshape(-1, kernel[0] * kernel[1])
    sums, products, count = patch_moments(x, kernel, stride, padding)
    assert count == patches.shape[0]
    torch.testing.assert_close(sums, patches.sum(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(products, patches.t() @ patches, rtol=1e-12, atol=1e-12)


def test_patch_moments_are_fp32_under_autocast():
    x = torch.rand(4, 1, 12, 12, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sums, products, _ = patch_moments(x, (3, 3))
    assert sums.dtype == products.dtype == torch.float32


def _norm(kind: str) -> nn.Module:
    return {"nn": lambda: nn.BatchNorm2d(6), "no_affine": lambda: nn.BatchNorm2d(6, affine=False),
            "cumulative": lambda: nn.BatchNorm2d(6, momentum=None),
            "untracked": lambda: nn.BatchNorm2d(6, track_running_stats=False)}[kind]()


def _pair(kind: str, bias: bool = True, stride: int = 1, padding: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(1, 6, 5, stride=stride, padding=padding, bias=bias), _norm(kind), nn.Sigmoid())
    with torch.no_grad():
        for p in block[1].parameters():
            p.uniform_(0.5, 1.5)
    return block.double()


def _train_steps(block: nn.Module, xs, grad_out) -> tuple[list, list]:
    outs, grads = [], []
    for x in xs:
        y = block(x)
        outs.append(y)
        grads.append(torch.autograd.grad(y, list(block.parameters()), grad_out))
    return outs, grads


@pytest.mark.parametrize("kind", ["nn", "no_affine", "cumulative", "untracked"])
@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("bias, stride, padding", [(True, 1, 2), (False, 2, 1), (True, 1, 0)])
def test_same_outputs_gradients_and_running_statistics_as_batch_norm(kind, rows, bias, stride, padding):
    plain = _pair(kind, bias, stride, padding)
    ours = copy.deepcopy(plain)
    swaps = use_row_stacked(ours) if rows else None
    swaps = use_folded_bn(ours, swaps)
    assert swaps.modules()[-2:] == [ours[0], ours[1]] and type(ours[0]).__name__.startswith("BNFolded")
    xs = [torch.rand(4, 1, 20, 20, dtype=torch.float64) for _ in range(3)]  # three steps: the running statistics
    grad_out = torch.randn_like(copy.deepcopy(plain)(xs[0]))  # a forward of its own: plain's statistics stay
    outs, grads = _train_steps(plain, xs, grad_out)
    outs2, grads2 = _train_steps(ours, xs, grad_out)
    for y, y2 in zip(outs, outs2):
        torch.testing.assert_close(y2, y, rtol=1e-10, atol=1e-12)
    for g, g2 in zip(grads, grads2):
        for a, b in zip(g, g2):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
    for (name, a), b in zip(plain.state_dict().items(), ours.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
    plain.eval(), ours.eval()
    torch.testing.assert_close(ours(xs[0]), plain(xs[0]), rtol=1e-12, atol=1e-14)
    swaps.restore()
    assert type(ours[0]) is nn.Conv2d and type(ours[1]) is type(plain[1])
    assert "folded_bn" not in vars(ours[0]) and "stack_channels_last" not in vars(ours[0])


def test_under_bf16_autocast_close_to_batch_norm():
    plain = _pair("nn").float()
    ours = copy.deepcopy(plain)
    use_row_stacked(ours, channels_last=True)
    use_folded_bn(ours)
    x = torch.rand(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y2 = plain(x), ours(x)
    assert y2.dtype == y.dtype
    torch.testing.assert_close(y2.float(), y.float(), rtol=0, atol=0.02)  # a few bf16 roundings of a sigmoid


def test_inputs_with_gradients_get_the_same_gradients():
    plain = _pair("nn")
    ours = copy.deepcopy(plain)
    use_folded_bn(ours)
    x = torch.rand(4, 1, 20, 20, dtype=torch.float64)
    grads = [torch.autograd.grad(m(x.clone().requires_grad_()).sum(), [m[0].weight])[0] for m in (plain, ours)]
    gx = [torch.autograd.grad(m(xx).sum(), xx)[0] for m in (plain, ours) for xx in [x.clone().requires_grad_()]]
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(gx[1], gx[0])  # the statistics' path to the input included
    torch.testing.assert_close(ours[1].running_var, plain[1].running_var)


def test_wide_images_take_the_plain_path(monkeypatch):
    # the moments' product grows with the width: at 224 pixels it would cost ~24x the convolution
    import moderncnn.layers.foldbn as foldbn

    calls = []
    monkeypatch.setattr(foldbn, "patch_moments", lambda *a: calls.append(a[0].shape) or patch_moments(*a))
    plain = _pair("nn")
    ours = copy.deepcopy(plain)
    use_folded_bn(ours)
    for size, folded in ((224, False), (28, True)):
        x = torch.rand(2, 1, size, size, dtype=torch.float64)
        torch.testing.assert_close(ours(x), plain(x))
        assert bool(calls) is folded
    torch.testing.assert_close(ours[1].running_mean, plain[1].running_mean)


def test_one_value_a_channel_gets_batch_norms_error():
    block = _pair("nn", padding=0)
    use_folded_bn(block)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        block(torch.rand(1, 1, 5, 5, dtype=torch.float64))


def test_only_batch_norm_after_a_single_channel_convolution_is_folded():
    keep = [(nn.Conv2d(3, 6, 5), nn.BatchNorm2d(6)),  # three input channels
            (nn.Conv2d(1, 32, 5), nn.BatchNorm2d(32)),  # wide: batch norm vectorises well
            (nn.Conv2d(1, 6, 5, dilation=2), nn.BatchNorm2d(6)),
            (nn.Conv2d(1, 6, 5, padding="same"), nn.BatchNorm2d(6)),
            (nn.Conv2d(1, 6, 5, padding=2, padding_mode="reflect"), nn.BatchNorm2d(6)),
            (nn.Conv2d(1, 6, 5), nn.BatchNorm2d(5)),  # not its channels
            (nn.Conv2d(1, 6, 5), BatchNorm(6, 4)),  # the book's from scratch: a student's code runs as written
            (nn.Conv2d(1, 6, 5), type("MyNorm", (nn.BatchNorm2d,), {})(6))]
    assert [bn_foldable(a, b) for a, b in keep] == [False] * len(keep)
    assert bn_foldable(nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6))
    # one after the other in a Sequential, in that order
    conv, bn = nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6)
    assert foldable_pairs(nn.Sequential(bn, conv)) == [] and foldable_pairs(nn.Sequential(conv, nn.ReLU(), bn)) == []
    model = nn.Sequential(nn.Sequential(conv, bn), nn.Sigmoid())
    assert foldable_pairs(model, image_size=28) == [(conv, bn)] and foldable_pairs(model, image_size=224) == []
    keys = list(model.state_dict())
    swaps = use_folded_bn(model)
    assert swaps.modules() == [conv, bn] and list(model.state_dict()) == keys


def test_the_book_models_with_such_pairs():
    assert set(FOLDED) == {"lenet_bn"}


@pytest.mark.parametrize("name", FOLDED)
def test_every_model_computes_the_same_folded(name):
    torch.manual_seed(0)
    model = moderncnn.create_model(name, in_channels=1).double().train()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    plain = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    swaps = use_folded_bn(model, use_row_stacked(model))
    ours = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    swaps.restore()
    scale = max(g.abs().max() for g in plain)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * scale)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.BatchNorm2d


def test_compiled_fold_matches_eager():
    torch.manual_seed(0)
    block = _pair("nn").float()
    use_folded_bn(block)
    x = torch.rand(16, 1, 28, 28)
    eager = block(x)
    block[1].reset_running_stats()
    compiled = torch.compile(block, dynamic=False)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
