"""LeNet: the book's Fashion-MNIST forms (plain, batch-normed) and LeNet-5 as the 1998 paper builds it.

LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-Based Learning Applied to
Document Recognition", Proceedings of the IEEE 86(11):2278-2324.
"""

from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.batchnorm import BatchNorm
from ..registry import register_model
from ._base import ModelBase, SequentialModel

__all__ = ["C3_TABLE", "Squash", "Subsampling", "PartialConv2d", "RBFOutput", "rbf_codes", "LeNet", "LeNet5"]

#: Table I of the paper: the S2 maps each of the 16 C3 maps is joined to (60 kernels in all).
C3_TABLE: tuple[tuple[int, ...], ...] = (
    *(tuple(sorted((k + j) % 6 for j in range(3))) for k in range(6)),  # maps 0-5: three neighbouring S2 maps
    *(tuple(sorted((k + j) % 6 for j in range(4))) for k in range(6)),  # maps 6-11: four neighbouring maps
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),  # maps 12-14: four maps, not all neighbours
    (0, 1, 2, 3, 4, 5),  # map 15: all six
)

# Our drawing of the digits 0-9 on the paper's 7x12 grid ('#' = +1, '.' = -1). The paper's
# own bitmaps (its Fig. 3) are not published as data; these differ in at least 8 of 84 pixels.
_DIGITS_7X12 = """
....... ....... ....... ....... ....... ....... ....... ....... ....... .......
..###.. ...#... ..###.. ..###.. ....#.. .#####. ..###.. ####### ..###.. ..###..
.#...#. ..##... .#...#. .#...#. ...##.. .#..... .#..... ......# .#...#. .#...#.
#.....# .#.#... .....#. .....#. ..#.#.. .#..... #...... .....#. .#...#. #.....#
#.....# ...#... .....#. .....#. .#..#.. .#..... #...... ....#.. .#...#. #.....#
#.....# ...#... ....#.. ..###.. #...#.. .####.. #.###.. ...#... ..###.. .#...##
#.....# ...#... ...#... .....#. ####### .....#. ##...#. ...#... .#...#. ..###.#
#.....# ...#... ..#.... .....#. ....#.. .....#. #.....# ..#.... #.....# ......#
#.....# ...#... .#..... .....#. ....#.. .....#. #.....# ..#.... #.....# ......#
.#...#. ...#... .#..... .#...#. ....#.. .#...#. .#...#. ..#.... .#...#. .....#.
..###.. .#####. .#####. ..###.. ....#.. ..###.. ..###.. ..#.... ..###.. ..###..
....... ....... ....... ....... ....... ....... ....... ....... ....... .......
"""
_CODE_SEED = 1998


def rbf_codes(num_classes: int) -> torch.Tensor:
    """The fixed +-1 target codes of LeNet-5's RBF output units, shape ``(num_classes, 84)``.

    For 10 classes: the digits 0-9 drawn on a 7x12 bitmap, as the paper does
    (our drawing). For any other count: random +-1 codes, which the paper
    names as the alternative, drawn from Python's ``random.Random(1998)``
    (``random()`` < 0.5 gives +1; its sequence is guaranteed stable across
    Python versions), 84 draws per class in class order, redrawing a code that
    repeats an earlier one. Class k's code does not depend on ``num_classes``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if num_classes == 10:
        rows = [line.split() for line in _DIGITS_7X12.strip().splitlines()]
        codes = ["".join(row[d] for row in rows) for d in range(10)]
        return torch.tensor([[1.0 if c == "#" else -1.0 for c in code] for code in codes])
    rng, codes = random.Random(_CODE_SEED), []
    while len(codes) < num_classes:
        code = [1.0 if rng.random() < 0.5 else -1.0 for _ in range(84)]
        if code not in codes:
            codes.append(code)
    return torch.tensor(codes)


def _uniform_(tensor: torch.Tensor, bound: float | torch.Tensor) -> None:
    with torch.no_grad():
        tensor.uniform_(-1.0, 1.0).mul_(bound)


class Squash(nn.Module):
    """The paper's squashing function ``f(a) = A tanh(S a)``, ``A = 1.7159``, ``S = 2/3`` (its Appendix A),
    chosen so that ``f(+-1) = +-1``."""

    A = 1.7159
    S = 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A * torch.tanh(self.S * x)


class Subsampling(nn.Module):
    """S2/S4: each non-overlapping ``k x k`` window summed, times one trainable coefficient plus one
    trainable bias per map (2 parameters per map)."""

    def __init__(self, channels: int, kernel_size: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # the paper's init: uniform in +-2.4 / fan-in, a unit here summing k*k inputs
        for p in (self.weight, self.bias):
            _uniform_(p, 2.4 / self.kernel_size**2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the window's mean times k*k rather than avg_pool2d(divisor_override=1): ONNX's AveragePool has no
        # divisor, and the ONNX exporter silently drops it (S2's sums came out 4x too small; docs/export.md)
        mean = F.avg_pool2d(x, self.kernel_size)
        return mean * (self.weight * self.kernel_size**2)[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, kernel_size={self.kernel_size}"


class PartialConv2d(nn.Module):
    """A convolution whose output map ``k`` sees only the input maps ``table[k]`` (LeNet-5's C3).

    Only the connected kernels are parameters (``weight`` is ``(kernels, k, k)``). The forward runs each kernel
    on its own input map (a grouped convolution over the gathered maps) and sums each output map's kernels,
    so it computes, and ``summary`` counts, the real connections only: C3's 60 kernels, not a dense 16x6 with
    zeros. :meth:`dense_weight` gives the equivalent dense weight.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], in_channels: int, kernel_size: int):
        super().__init__()
        if any(not 0 <= i < in_channels for ins in table for i in ins):
            raise ValueError(f"connection table names an input map outside 0..{in_channels - 1}: {table}")
        self.table, self.in_channels, self.out_channels, self.kernel_size = table, in_channels, len(table), kernel_size
        self.register_buffer("inputs", torch.tensor([i for ins in table for i in ins]), persistent=False)
        self.register_buffer("outputs", torch.tensor([o for o, ins in enumerate(table) for _ in ins]),
                             persistent=False)
        self.weight = nn.Parameter(torch.empty(len(self.inputs), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = torch.tensor([len(ins) * self.kernel_size**2 for ins in self.table], dtype=torch.float)
        per_kernel = torch.cat([fan_in[o].expand(len(ins)) for o, ins in enumerate(self.table)])
        _uniform_(self.weight, (2.4 / per_kernel)[:, None, None])
        _uniform_(self.bias, 2.4 / fan_in)

    def dense_weight(self) -> torch.Tensor:
        """The ``(out, in, k, k)`` weight of the equivalent dense convolution, zero where the table has no link."""
        k = self.kernel_size
        flat = self.outputs * self.in_channels + self.inputs
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k).index_copy(0, flat, self.weight)
        return dense.view(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_kernel = F.conv2d(x.index_select(1, self.inputs), self.weight.unsqueeze(1), groups=len(self.inputs))
        n, _, h, w = per_kernel.shape
        summed = per_kernel.new_zeros(n, self.out_channels, h, w).index_add(1, self.outputs, per_kernel)
        return summed + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, kernels={len(self.inputs)}"


class RBFOutput(nn.Module):
    """Euclidean RBF units over fixed codes (a buffer, not trained): returns ``-sum_j (x_j - w_ij)^2``.

    The paper's output ``y_i`` is the distance itself (a penalty: smallest wins);
    its negation is a logit, so ``nn.CrossEntropyLoss`` applies. The paper's MAP
    criterion (its eq. 9) is ``y_D + log(exp(-j) + sum_i exp(-y_i))``: cross-entropy
    on these logits is that loss without the ``exp(-j)`` "rubbish class" term (j -> oo).
    """

    def __init__(self, codes: torch.Tensor):
        super().__init__()
        self.register_buffer("codes", codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x[:, None, :] - self.codes).square().sum(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.codes.shape[1]}, out_features={self.codes.shape[0]}"


class LeNet(SequentialModel):
    """The book's LeNet forms: its ``nn.Sequential``, layer for layer."""

    default_image_size = 28
    min_input_size = 28
    max_input_size = 31


class LeNet5(ModelBase):
    """LeNet-5 as the paper builds it; see :func:`lenet5`."""

    default_image_size = 32
    min_input_size = 32
    max_input_size = 35

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.c1 = nn.Sequential(nn.Conv2d(in_channels, 6, 5), Squash())
        self.s2 = nn.Sequential(Subsampling(6), Squash())
        self.c3 = nn.Sequential(PartialConv2d(C3_TABLE, 6, 5), Squash())
        self.s4 = nn.Sequential(Subsampling(16), Squash())
        self.c5 = nn.Sequential(nn.Conv2d(16, 120, 5), Squash())
        self.f6 = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), Squash())
        self.output = RBFOutput(rbf_codes(num_classes))
        for layer in (self.c1[0], self.c5[0], self.f6[1]):
            fan_in = layer.weight[0].numel()
            _uniform_(layer.weight, 2.4 / fan_in)
            _uniform_(layer.bias, 2.4 / fan_in)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.c5(self.s4(self.c3(self.s2(self.c1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.f6(x)
        return x if pre_logits else self.output(x)

    def get_classifier(self) -> nn.Module:
        return self.output

    def reset_classifier(self, num_classes: int) -> None:
        self.output = RBFOutput(rbf_codes(num_classes).to(self.output.codes))
        self.num_classes = num_classes


_BOOK_NORMS = {
    None: lambda n, dims: [],
    "nn": lambda n, dims: [nn.BatchNorm2d(n) if dims == 4 else nn.BatchNorm1d(n)],
    "scratch": lambda n, dims: [BatchNorm(n, num_dims=dims)],
}


def _book_lenet(*, c1_padding: int, norm: str | None, num_classes: int, in_channels: int) -> LeNet:
    def unit(layer: nn.Module, n: int, dims: int) -> list[nn.Module]:
        return [layer, *_BOOK_NORMS[norm](n, dims), nn.Sigmoid()]

    side = ((28 + 2 * c1_padding - 4) // 2 - 4) // 2  # the 16 maps' side before the flatten
    features = [
        *unit(nn.Conv2d(in_channels, 6, kernel_size=5, padding=c1_padding), 6, 4),
        nn.AvgPool2d(kernel_size=2, stride=2),
        *unit(nn.Conv2d(6, 16, kernel_size=5), 16, 4),
        nn.AvgPool2d(kernel_size=2, stride=2),
    ]
    head = [
        nn.Flatten(),
        *unit(nn.Linear(16 * side * side, 120), 120, 2),
        *unit(nn.Linear(120, 84), 84, 2),
        nn.Linear(84, num_classes),
    ]
    return LeNet(*features, *head, head_start=len(features), in_channels=in_channels, num_classes=num_classes)


@register_model
def lenet(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet:
    """The book's LeNet (chapter "Convolutional Neural Networks (LeNet)"), 28x28 Fashion-MNIST input.

    After LeCun et al., 1998, "Gradient-Based Learning Applied to Document
    Recognition", Proc. IEEE. Differs from the paper (see :func:`lenet5`): padding 2
    on C1 stands in for the paper's 32x32 input, plain sigmoid activations,
    average pooling without trainable coefficients, a fully connected C3 and a
    dense output layer instead of RBF units.
    """
    return _book_lenet(c1_padding=2, norm=None, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def lenet_bn(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet:
    """The book's LeNet with batch normalization, concise form (``nn.BatchNorm2d``/``nn.BatchNorm1d``).

    Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network
    Training by Reducing Internal Covariate Shift", ICML, arXiv:1502.03167.
    As in the book's batch-norm section, C1 has no padding (unlike :func:`lenet`),
    so the flattened features are 16x4x4 = 256.
    """
    return _book_lenet(c1_padding=0, norm="nn", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def lenet_bn_scratch(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet:
    """The book's LeNet with its own from-scratch ``BatchNorm(num_features, num_dims)`` layers.

    Ioffe & Szegedy, 2015, arXiv:1502.03167. Same layout as :func:`lenet_bn`.
    Train/eval follows ``model.train()``/``model.eval()`` rather than the book's
    ``torch.is_grad_enabled()``, and the moving statistics are buffers; see
    :mod:`moderncnn.layers.batchnorm`.
    """
    return _book_lenet(c1_padding=0, norm="scratch", num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def lenet5(*, num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 as LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-Based Learning Applied to Document
    Recognition", Proc. IEEE 86(11), build it: 32x32 input, 60,000 trainable parameters.

    ``c1`` 6@5x5 conv (156) -> ``s2`` trainable 2x2 subsampling (12) -> ``c3``
    16@5x5 joined to S2 by the paper's Table I, 60 kernels (1,516) -> ``s4`` (32)
    -> ``c5`` 120@5x5 (48,120) -> ``f6`` 84 units (10,164) -> ``output``: one
    Euclidean RBF unit per class over fixed +-1 codes (:func:`rbf_codes`; no
    parameters). Every layer up to F6 ends in the paper's squashing function
    ``1.7159 tanh(2a/3)``; parameters start uniform in +-2.4/fan-in, as in the
    paper. The model returns ``-distance`` as logits for ``nn.CrossEntropyLoss``,
    where the paper minimises its own MAP criterion (see :class:`RBFOutput`). The
    paper also scales pixels so the background is -0.1 and ink 1.175; that is
    the data pipeline's business, not the model's. Parameter counts are for
    ``in_channels=1``; multiply-adds are 325,680, C3 counted over its 60 real
    kernels (:class:`PartialConv2d`).
    """
    return LeNet5(num_classes=num_classes, in_channels=in_channels, **kwargs)
