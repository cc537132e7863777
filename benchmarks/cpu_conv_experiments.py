"""Could the LeNet family's CPU step get faster without PyTorch's own small-channel convolutions?

    python benchmarks/cpu_conv_experiments.py [--model lenet] [--rounds 15] [--eager] [--no-amp]

An experiment kept so that its figures in docs/benchmarks.md can be re-measured; nothing in the
package uses it. It times the trainer's train step (bf16 where the CPU has it in hardware, else fp32;
batch 256, 28 pixels) round-robin, so that this machine's drift hits every variant alike, for:

- ``plain``: the model as built (oneDNN convolutions);
- ``banded``: every stride-1 convolution with at most 8 input channels computed as one GEMM over image
  rows against a banded weight matrix, T[(i, u, c), (v, o)] = w[o, c, i, u - v]: the 1->6 5x5
  convolution becomes a [B*28, 160] x [160, 168] matmul that AMX runs in ~0.5 ms, where oneDNN's direct
  kernel takes 1.6-2.0 ms. It is a ``torch.library`` custom op with its own backward, so the compiler
  leaves its inside alone (traced, inductor's generated gather and fold loops were slower still);
- ``meanpool``: 2x2 average pooling as a mean over an unflattened view (its backward is a broadcast);
- ``cpp_wrapper`` (compiled only): the plain model with inductor's C++ wrapper, which launches the generated
  kernels from C++ rather than Python.
"""

from __future__ import annotations

import argparse

import torch
import torch._inductor.config as inductor_config
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from _timing import add_no_amp, cpu_amp_dtype, precision_name, print_quartiles, round_robin_steps
from moderncnn import create_model
from moderncnn.train import init_weights, make_train_step


def _band(w: Tensor, wp: int) -> Tensor:
    """The banded matrix of ``w`` for rows ``wp`` pixels wide, built by the skew trick (rows of length
    ``wp + 1`` read back ``wp`` at a time shift right by one each), so its backward is dense too."""
    o, c, kh, kw = w.shape
    wo = wp - kw + 1
    r = F.pad(w.permute(2, 1, 0, 3), (0, wp + 1 - kw))
    r = r.unsqueeze(3).expand(kh, c, o, wo, wp + 1).reshape(kh, c, o, wo * (wp + 1))
    r = r[..., : wo * wp].reshape(kh, c, o, wo, wp)
    return r.permute(0, 4, 1, 3, 2).reshape(kh * wp * c, wo * o)


def _rows(x: Tensor, kh: int, pad: int) -> Tensor:
    """Every output row's ``kh`` input rows side by side: ``[B * Ho, kh * Wp * C]`` from NCHW ``x``."""
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))
    b, hp, wp, c = xh.shape
    ho = hp - kh + 1
    return torch.stack([xh[:, i:i + ho] for i in range(kh)], 2).reshape(b * ho, kh * wp * c)


@torch.library.custom_op("moderncnn_bench::banded_conv", mutates_args=())
def banded_conv(x: Tensor, w: Tensor, b: Tensor, pad: int) -> Tensor:
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    y = torch.addmm(b.repeat(wo), _rows(x, kh, pad), _band(w, wd + 2 * pad))
    return y.view(n, ho, wo, o).permute(0, 3, 1, 2)  # channels_last memory


@banded_conv.register_fake
def _(x, w, b, pad):
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    return x.new_empty((n, h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1, o)).permute(0, 3, 1, 2)


@torch.library.custom_op("moderncnn_bench::banded_conv_backward", mutates_args=())
def banded_conv_backward(gy: Tensor, x: Tensor, w: Tensor, pad: int, need_x: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    hp, wp = h + 2 * pad, wd + 2 * pad
    ho, wo = hp - kh + 1, wp - kw + 1
    cols = wo * o
    g = gy.permute(0, 2, 3, 1).reshape(n * ho, cols)
    m = _rows(x, kh, pad).t() @ g
    # dW[o, c, i, j] = sum over v of m[(i, v + j, c), (v, o)]: a strided view of m's band, summed over v
    gw = m.as_strided((kh, kw, c, o, wo), (wp * c * cols, c * cols, cols, 1, c * cols + o)).sum(-1)
    gb = g.sum(0).view(wo, o).sum(0)
    gx = x.new_zeros(())
    if need_x:
        gr = (g @ _band(w, wp).t()).view(n, ho, kh, wp, c)
        gxp = gy.new_zeros(n, hp, wp, c)
        for i in range(kh):
            gxp[:, i:i + ho] += gr[:, :, i]
        gx = gxp[:, pad:hp - pad, pad:wp - pad].permute(0, 3, 1, 2)
    return gx, gw.permute(3, 2, 0, 1).contiguous(), gb


@banded_conv_backward.register_fake
def _(gy, x, w, pad, need_x):
    n, c, h, wd = x.shape
    gx = x.new_empty((n, h, wd, c)).permute(0, 3, 1, 2) if need_x else x.new_empty(())
    return gx, w.new_empty(w.shape), w.new_empty((w.shape[0],))


def _setup(ctx, inputs, output):
    x, w, _, pad = inputs
    ctx.save_for_backward(x, w)
    ctx.pad = pad


def _backward(ctx, gy):
    x, w = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    gx, gw, gb = banded_conv_backward(gy, x, w, ctx.pad, need_x)
    return (gx if need_x else None), gw, gb, None


banded_conv.register_autograd(_backward, setup_context=_setup)


class BandedConv2d(nn.Conv2d):
    """The same parameters as ``nn.Conv2d``; forward through :func:`banded_conv`."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # a custom op gets no autocast casts of its own
            dt = torch.get_autocast_dtype("cpu")
            x, w, b = x.to(dt), w.to(dt), b.to(dt)
        return banded_conv(x, w, b, self.padding[0])


class MeanPool2d(nn.AvgPool2d):
    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        return x.unflatten(3, (x.shape[3] // k, k)).unflatten(2, (x.shape[2] // k, k)).mean((3, 5))


def variant(model: nn.Module, name: str) -> nn.Module:
    for m in model.modules():
        if name == "banded" and type(m) is nn.Conv2d and m.stride == (1, 1) and m.groups == 1 \
                and m.dilation == (1, 1) and m.in_channels <= 8 and m.bias is not None:
            m.__class__ = BandedConv2d
        if name == "meanpool" and type(m) is nn.AvgPool2d and m.kernel_size == m.stride == 2 and m.padding == 0:
            m.__class__ = MeanPool2d
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--eager", action="store_true", help="time the eager step instead of the compiled one")
    add_no_amp(p)
    args = p.parse_args(argv)
    amp_dtype = cpu_amp_dtype(args.no_amp)
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    steps = {}
    for name in ("plain", "banded", "meanpool") + (() if args.eager else ("cpp_wrapper",)):
        torch.manual_seed(0)
        model = variant(init_weights(create_model(args.model)), name).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        run = model if args.eager else torch.compile(model, dynamic=False)
        if name == "cpp_wrapper":
            # a function of its own: the same module class would reuse the plain variant's compiled code
            run = torch.compile(lambda inputs: model(inputs), dynamic=False)
        steps[name] = make_train_step(run, opt, nn.CrossEntropyLoss(), amp_dtype=amp_dtype)
        with inductor_config.patch(cpp_wrapper=name == "cpp_wrapper"):  # read when the graphs compile
            for _ in range(3):
                steps[name](x, y)
    times = round_robin_steps(steps, x, y, args.rounds, per_round=4)
    print_quartiles(f"{args.model} {'eager' if args.eager else 'compiled'}, {precision_name(amp_dtype)}", times)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
