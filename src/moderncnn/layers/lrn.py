"""Local response normalization (AlexNet, GoogLeNet v1) that keeps bf16 on the CPU."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LocalResponseNorm"]


def _channel_window_sum(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``out[..., c, :, :] = x[..., c - before, :, :] + ... + x[..., c + after, :, :]``, zero beyond the first
    and last channel (dim -3: the channels of ``(N, C, H, W)``, or of each group of ``(N, G, C/G, H, W)``)."""
    c = x.shape[-3]
    padded = F.pad(x, (0, 0, 0, 0, before, after))
    out = padded.narrow(-3, 0, c).clone()
    for j in range(1, before + after + 1):
        out += padded.narrow(-3, j, c)
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
    shifted channel slices; optionally the form AlexNet's paper prints, and windows kept within groups.

    PyTorch sums the window with ``avg_pool3d``, which autocast runs in fp32 (it has no bf16 CPU kernel): on
    the CPU that made alexnet_paper train at 14 images/s against alexnet's 93, and googlenet_paper at 9, most
    of it in their LRN layers. This form keeps bf16 and is several times faster (docs/notes.md). (A 1x1
    convolution by a 0/1 band matrix is as fast, but would count as multiply-adds in ``summary``.)

    ``alpha_over_size=True`` is PyTorch's (and Caffe's, and cuda-convnet's) convention,
    ``x / (k + alpha / size * sum x^2) ** beta``; ``False`` is the formula as Krizhevsky et al. 2012 print it,
    ``x / (k + alpha * sum x^2) ** beta``. ``groups=G`` splits the channels into G consecutive groups and
    keeps each window inside its group, as each of AlexNet's two GPUs normalised only its own maps.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                 alpha_over_size: bool = True, groups: int = 1):
        super().__init__(size, alpha, beta, k)
        if groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        self.alpha_over_size, self.groups = alpha_over_size, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.alpha / self.size if self.alpha_over_size else self.alpha
        if x.dim() != 4:
            if self.groups != 1:
                raise ValueError(f"a grouped LocalResponseNorm takes (N, C, H, W) input, got shape {tuple(x.shape)}")
            return F.local_response_norm(x, self.size, scale * self.size, self.beta, self.k)
        n, c, h, w = x.shape
        if c % self.groups:
            raise ValueError(f"LocalResponseNorm(groups={self.groups}) got {c} channels, not a multiple of it")
        sq = (x * x).view(n, self.groups, c // self.groups, h, w) if self.groups > 1 else x * x
        window = _ChannelWindowSum.apply(sq, self.size // 2, (self.size - 1) // 2).reshape(n, c, h, w)
        return x / (window * scale + self.k).pow(self.beta)

    def extra_repr(self) -> str:
        extra = "" if self.alpha_over_size else ", alpha_over_size=False"
        return super().extra_repr() + extra + (f", groups={self.groups}" if self.groups > 1 else "")
