"""Average pooling over non-overlapping patches with a faster backward: a speed option for the CPU.

When the pooling window equals its stride (LeNet's and DenseNet's ``AvgPool2d(2, stride=2)``), the gradient
of each input is its patch's output gradient over the window's area: an upsampling. PyTorch's CPU
``avg_pool2d_backward``, and the loops the compiler generates for it, run slowly on a few channels
(channels_last puts LeNet's 6 innermost: 6 of a vector's 16 lanes, with per-element index arithmetic).
Here the backward is one small matrix product, which interleaves each gradient ``kw`` times along the
width, and a broadcast of whole rows along the height, which vectorises fully and fuses with what comes
next (the sigmoid's backward). The forward is ``avg_pool2d`` itself, and the gradients are the same
numbers: each output gradient divided by the window's area, as ``avg_pool2d`` rounds it, then copied.

LeNet's whole book run is 1.16x faster with it on a CPU with bf16 in hardware; beside batch norm (BN LeNet,
DenseNet) it is no faster, and compiled it splits a fusion with batch norm's backward, so the speed policy
uses it in models without batch norm (docs/benchmarks.md, docs/notes.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .swap import ModuleSwaps

__all__ = ["PatchAvgPool2d", "patch_poolable", "use_patch_pool"]


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[-1])


class _PatchAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
        ctx.shape, ctx.window = x.shape, (kh, kw)
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return F.avg_pool2d(x, (kh, kw))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        n, c, h, w = ctx.shape
        kh, kw = ctx.window
        if ctx.channels_last:  # (pixels, C) @ (C, kw*C): each pixel's C gradients kw times side by side
            spread = torch.eye(c, dtype=grad.dtype, device=grad.device).repeat(1, kw)
            rows, width = n * (h // kh), w * c
            g = (grad / (kh * kw)).permute(0, 2, 3, 1).reshape(-1, c) @ spread
        else:  # (rows, W/kw) @ (W/kw, W): each gradient kw times along its row
            spread = torch.eye(w // kw, dtype=grad.dtype, device=grad.device).repeat_interleave(kw, 1)
            rows, width = n * c * (h // kh), w
            g = (grad / (kh * kw)).reshape(-1, w // kw) @ spread
        # and each such row kh times (a copy: with a window as tall as the map, reshape would keep the expand's view)
        g = g.reshape(rows, 1, width).expand(rows, kh, width).contiguous()
        if ctx.channels_last:
            return g.view(n, h, w, c).permute(0, 3, 1, 2), None, None
        return g.view(n, c, h, w), None, None


class PatchAvgPool2d(nn.AvgPool2d):
    """An ``nn.AvgPool2d`` whose window equals its stride, with a faster backward; same results.

    Made by :func:`use_patch_pool` from plain ``nn.AvgPool2d`` modules. Inputs whose height or width the
    window does not divide (the plain layer drops the remainder) take the plain path.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kh, kw = _pair(self.kernel_size)
        if input.dim() != 4 or input.shape[-2] % kh or input.shape[-1] % kw or not input.requires_grad:
            return super().forward(input)
        return _PatchAvgPool.apply(input, kh, kw)


def patch_poolable(m: nn.Module) -> bool:
    """A plain ``nn.AvgPool2d`` over non-overlapping patches (window = stride, no padding) that
    :func:`use_patch_pool` converts."""
    return (type(m) is nn.AvgPool2d and _pair(m.kernel_size) == _pair(m.stride or m.kernel_size)
            and _pair(m.padding) == (0, 0) and not m.ceil_mode and m.divisor_override is None)


def use_patch_pool(model: nn.Module, swaps: ModuleSwaps | None = None) -> ModuleSwaps:
    """Give ``model``'s non-overlapping ``nn.AvgPool2d`` layers the faster backward, recorded in ``swaps`` (a new
    record if None), which is returned: its ``restore()`` makes them plain ``nn.AvgPool2d`` again."""
    swaps = ModuleSwaps() if swaps is None else swaps
    for m in [m for m in model.modules() if patch_poolable(m)]:
        swaps.swap(m, PatchAvgPool2d)
    return swaps
