"""Convolutions over one input channel computed over stacked rows: a speed option for the GPU.

Every model trained on grey images starts with a convolution over one channel. Stacking the kernel's ``kh``
row-shifted copies of the padded input as channels turns a ``kh x kw`` convolution over one channel into a
``1 x kw`` convolution over ``kh`` channels, with the weights laid out as ``(out, kh, 1, kw)``: the same
products and sums. cuDNN runs that faster than its slow single-channel kernel (on an H100, AlexNet 1.21x,
NiN 1.18x, VGG 1.10x). On a CPU, oneDNN's stem got faster too, but whole book runs did not (docs/notes.md), so
the speed policy uses it on a GPU only. Over three or more channels the direct convolution is faster, so only
single-channel ones are converted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .swap import ModuleSwaps

__all__ = ["RowStackedConv2d", "row_stackable", "use_row_stacked"]


class RowStackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` over one input channel, computed over stacked rows; same parameters and results.

    Made by :func:`use_row_stacked` from plain ``nn.Conv2d`` modules (its state dict is theirs).
    """

    # the stacked rows' memory format: the model's (a one-channel input does not show which it is)
    stack_channels_last = False

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        kh, _ = self.kernel_size
        sh, sw = self.stride
        ph, pw = self.padding
        device = input.device.type
        if torch.is_autocast_enabled(device) and input.is_floating_point() and input.dtype != torch.float64:
            # the convolution would cast the stack: casting the image first moves a kh-th of the bytes
            input = input.to(torch.get_autocast_dtype(device))
        x = F.pad(input, (pw, pw, ph, ph))
        # (N, rows, W, kh) as a view, then one copy into the stack's memory format (a cat of the kh row slices
        # and a second copy into channels_last took 1.9 of BN LeNet's 12.3 ms eager bf16 step, this 0.2)
        stacked = x[:, 0].unfold(1, kh, sh).permute(0, 3, 1, 2)
        layout = torch.channels_last if self.stack_channels_last else torch.contiguous_format
        return F.conv2d(stacked.contiguous(memory_format=layout), weight.permute(0, 2, 1, 3), bias, stride=(1, sw))


def row_stackable(m: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` over one input channel (taller than one row) that :func:`use_row_stacked` converts."""
    return (type(m) is nn.Conv2d and m.in_channels == 1 and m.groups == 1 and m.dilation == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str) and m.kernel_size[0] > 1)


def use_row_stacked(model: nn.Module, channels_last: bool = False, swaps: ModuleSwaps | None = None) -> ModuleSwaps:
    """Compute ``model``'s single-channel ``nn.Conv2d`` layers over stacked rows, recorded in ``swaps`` (a new
    record if None), which is returned: its ``restore()`` makes them plain ``nn.Conv2d`` again.

    ``channels_last``: the model runs in that memory format (the stacked rows follow it).
    """
    swaps = ModuleSwaps() if swaps is None else swaps
    for m in [m for m in model.modules() if row_stackable(m)]:
        swaps.swap(m, RowStackedConv2d, stack_channels_last=channels_last)
    return swaps
