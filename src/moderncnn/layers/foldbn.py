"""Batch norm after a convolution over the model's input, folded into that convolution: a speed option for the CPU.

Training-mode batch norm needs each channel's mean and variance over the batch. After a convolution over the
input images, those are functions of the weights and of the input's patch moments: with ``p`` a ``kh x kw``
patch, ``y = w . p + b`` has mean ``w . E[p] + b`` and variance ``w^T Cov[p] w``. The layer pair becomes one
convolution with the weights ``w * gamma / sqrt(var + eps)`` and a matching bias, where ``var`` and the mean
keep their dependence on ``w`` (and on the input, should it need a gradient): autograd then gives the same
gradients as batch norm's backward, the statistics' terms included.

Why: PyTorch's CPU kernels for batch norm over a few channels are slow, and so are the loops the compiler
generates for it (channels_last puts BN LeNet's 6 channels innermost: masked vectors, a serial reduction).
Only ``nn.BatchNorm2d`` is folded: the book's from-scratch ``BatchNorm`` is code a student reads and
changes, so it always runs as written.
The moments come from one batched matrix product over overlapping bands of image rows, in fp32 however the
step is autocast (every pair of pixels in a band, summed over the batch; a band holds every patch of some
output rows), then a sum over the output positions through a strided view. The whole book run of BN LeNet
it makes faster, on a CPU with bf16 in hardware: docs/benchmarks.md.

The results are batch norm's up to rounding: float64 agrees to ~1e-15, and the running statistics are updated
as each layer's own rule says. The product's cost grows with the image's width, so a batch whose product would
cost more than 8x the convolution (LeNet at 28 pixels: 3.5x) takes the plain path, as does evaluation mode.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rowconv import RowStackedConv2d
from .swap import ModuleSwaps

__all__ = ["patch_moments", "bn_foldable", "foldable_pairs", "use_folded_bn"]

# the moments' multiply-adds over the convolution's, past which the plain path (NCHW) is faster: BN LeNet's eager
# step at 56 pixels (6.4) as fast either way, at 112 (12.4) folded 1.35x slower
_MAX_COST = 8


def _geometry(kernel_size, stride, padding, h: int, w: int) -> tuple[int, int, int, int, int, int]:
    """For ``h x w`` inputs: the padded width, output rows and columns, output rows a band, bands, and input rows
    a band (each band's rows hold every patch of its output rows)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    rows, cols = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    q = max(1, -(-(kh - sh) // sh))  # a band's overlap with the next is kh - sh rows: about half the band
    return w + 2 * pw, rows, cols, q, -(-rows // q), (q - 1) * sh + kh


def patch_moments(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                  padding: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums over the batch and the output positions of a convolution's zero-padded ``kh x kw`` input patches:
    ``(sum of p, sum of p p^T, number of patches)``, shaped ``(kh*kw,)`` and ``(kh*kw, kh*kw)``, in fp32 (float64
    for float64 input). ``x``: ``(N, 1, H, W)``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, _, h, _ = x.shape
    hp = h + 2 * ph
    wp, rows, cols, q, bands, height = _geometry(kernel_size, stride, padding, *x.shape[2:])
    total = (bands - 1) * q * sh + height  # rows past the image are zeros; no kept patch reads them
    acc = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        xp = F.pad(x.to(acc), (pw, pw, ph, ph + max(total - hp, 0)))[:, 0, :total].reshape(n, total * wp)
        band = xp.as_strided((bands, n, height * wp), (q * sh * wp, xp.stride(0), 1))
        grams = torch.bmm(band.transpose(1, 2), band)  # [band, (row, col), (row, col)] summed over the batch
        side = height * wp

        def positions(first: int, count: int, per_band: int) -> torch.Tensor:
            # element [i, j, k, l, band, r, c]: pixels (r*sh + i, c*sw + j) and (r*sh + k, c*sw + l) of the band
            view = grams.as_strided(
                (kh, kw, kh, kw, count, per_band, cols),
                (side * wp, side, wp, 1, side * side, sh * (side * wp + wp), sw * (side + 1)), first * side * side)
            return view.sum((4, 5, 6))

        full, rest = divmod(rows, q)  # the last band may hold fewer output rows than the others
        products = positions(0, full, q) if full else 0
        if rest:
            products = products + positions(full, 1, rest)
        sums = xp.sum(0).as_strided((kh, kw, rows, cols), (wp, 1, sh * wp, sw)).sum((2, 3))
    return sums.reshape(kh * kw), products.reshape(kh * kw, kh * kw), n * rows * cols


def _pays(conv: nn.Conv2d, h: int, w: int) -> bool:
    """Whether the moments' multiply-adds for ``h x w`` inputs are at most ``_MAX_COST`` times the convolution's."""
    wp, rows, cols, _, bands, height = _geometry(conv.kernel_size, conv.stride, conv.padding, h, w)
    kh, kw = conv.kernel_size
    return bands * (height * wp) ** 2 <= _MAX_COST * rows * cols * conv.out_channels * kh * kw


@torch.no_grad()
def _track(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Update ``bn``'s running statistics with a batch's, by ``bn``'s own rule."""
    if bn.track_running_stats and bn.running_mean is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.lerp_(mean.to(bn.running_mean), factor)
        bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var), factor)


class _FoldedConv:
    """Mixed in before a convolution's class: in training, the batch norm after it happens here."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bn = self.folded_bn
        if not bn.training:
            return super().forward(input)
        if input.dim() != 4 or not _pays(self, *input.shape[2:]):
            return bn.plain_forward(super().forward(input))
        sums, products, count = patch_moments(input, self.kernel_size, self.stride, self.padding)
        if count < 2:  # batch norm's own error: more than one value per channel is needed
            return bn.plain_forward(super().forward(input))
        with torch.autocast(input.device.type, enabled=False):
            mean_p = sums / count
            cov = products / count - torch.outer(mean_p, mean_p)
            w = self.weight.to(cov.dtype).reshape(self.out_channels, -1)
            mean = w @ mean_p + (0 if self.bias is None else self.bias.to(cov.dtype))
            var = ((w @ cov) * w).sum(1).clamp_min(0)
            scale = torch.rsqrt(var + bn.eps)
            gamma, beta = bn.weight, bn.bias
            if gamma is not None:
                scale = scale * gamma
            shift = -mean * scale if beta is None else beta - mean * scale
            weight = self.weight * scale.view(-1, 1, 1, 1).to(self.weight.dtype)
            bias = (shift if self.bias is None else self.bias * scale + shift).to(self.weight.dtype)
        _track(bn, mean.detach(), var.detach(), count)
        return self._conv_forward(input, weight, bias)


class _FoldedNorm:
    """Mixed in before a batch norm's class: in training its convolution has normalised already."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input if self.training else super().forward(input)

    def plain_forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input)


@functools.cache
def _folded(mixin: type, base: type) -> type:
    # one class per base, made once: torch.compile keys its compiled code on the module's class
    return type(f"BNFolded{base.__name__}", (mixin, base), {"__module__": __name__})


def bn_foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """``conv`` a plain or row-stacked ``nn.Conv2d`` over one input channel, ``bn`` the ``nn.BatchNorm2d`` of its
    output channels, over fewer than 16 of them (wider ones vectorise well), that :func:`use_folded_bn` folds."""
    conv_ok = (type(conv) in (nn.Conv2d, RowStackedConv2d) and conv.in_channels == 1 and conv.groups == 1
               and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))
    return conv_ok and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels < 16


def foldable_pairs(model: nn.Module, image_size: int | None = None) -> list[tuple[nn.Module, nn.Module]]:
    """The ``(conv, bn)`` pairs of ``model`` that :func:`use_folded_bn` folds: one after the other in an
    ``nn.Sequential``, :func:`bn_foldable`. ``image_size``: only those whose convolution, over images of that
    size, takes the folded path (narrower images than the moments' cost allows)."""
    return [(a, b) for seq in model.modules() if isinstance(seq, nn.Sequential)
            for a, b in zip(seq, list(seq)[1:]) if bn_foldable(a, b)
            and (image_size is None or _pays(a, image_size, image_size))]


def use_folded_bn(model: nn.Module, swaps: ModuleSwaps | None = None) -> ModuleSwaps:
    """Fold the batch norms of :func:`foldable_pairs` into their convolutions while training, recorded in
    ``swaps`` (a new record if None), which is returned: its ``restore()`` gives both layers their classes back.
    State dicts are unchanged."""
    swaps = ModuleSwaps() if swaps is None else swaps
    for conv, bn in foldable_pairs(model):
        swaps.swap(conv, _folded(_FoldedConv, type(conv)), folded_bn=bn)  # not a submodule: the state dict stays
        swaps.swap(bn, _folded(_FoldedNorm, type(bn)))
    return swaps
