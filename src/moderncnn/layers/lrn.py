"""Local response normalization (AlexNet, GoogLeNet v1) that keeps bf16 on the CPU."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LocalResponseNorm"]


def _channel_window_sum(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``out[:, c] = x[:, c - before] + ... + x[:, c + after]``, zero beyond the first and last channel."""
    c = x.shape[1]
    padded = F.pad(x, (0, 0, 0, 0, before, after))
    out = padded[:, :c].clone()
    for j in range(1, before + after + 1):
        out += padded[:, j:j + c]
    return out


class _ChannelWindowSum(torch.autograd.Function):
    # Autograd's own backward of the shifted slices builds a zero-filled copy per slice; the transpose of a
    # window sum is the mirrored window sum, a third of the memory traffic.
    @staticmethod
    def forward(ctx, x: torch.Tensor, before: int, after: int) -> torch.Tensor:
        ctx.before, ctx.after = before, after
        return _channel_window_sum(x, before, after)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _channel_window_sum(grad, ctx.after, ctx.before), None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm``, the same arithmetic, with the sum over neighbouring channels done as a sum of
    shifted channel slices.

    PyTorch sums the window with ``avg_pool3d``, which autocast runs in fp32 (it has no bf16 CPU kernel): on
    the CPU that made alexnet_paper train at 14 images/s against alexnet's 93, and googlenet_paper at 9, most
    of it in their LRN layers. This form keeps bf16 and is several times faster (docs/notes.md). (A 1x1
    convolution by a 0/1 band matrix is as fast, but would count as multiply-adds in ``summary``.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        window = _ChannelWindowSum.apply(x * x, self.size // 2, (self.size - 1) // 2)
        return x / (window * (self.alpha / self.size) + self.k).pow(self.beta)
