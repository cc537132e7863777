"""Could the compiled BN LeNet's batch norm over 6 channels get faster on the CPU?

    python benchmarks/cpu_bn_experiments.py [--model lenet_bn] [--rounds 12] [--variants plain,eager_op,...] [--eager]
        [--no-amp]

An experiment kept so that its figures in docs/benchmarks.md can be re-measured; nothing in the package uses
it (what does: folding that batch norm into the convolution before it, ``moderncnn.layers.foldbn``). Compiled, the BN LeNet's first batch norm, sigmoid and pooling become loops with its 6 channels innermost
(channels_last): masked 16-lane vectors, 6 lanes in use. The trainer's train step (bf16 where the CPU has it
in hardware, else fp32; channels_last, stacked rows, batch 256) is timed round-robin, so that this machine's
drift hits every variant alike, for:

- ``plain``: ``nn.BatchNorm2d`` as the compiler generates it;
- ``eager_op``: batch norm over fewer than 16 channels as a custom op (the compiler calls it as it is, so
  nothing fuses into worse loops) of ATen calls over a ``[N*H*W/8, 48]`` view, whose rows fill three vectors:
  statistics in fp32, two passes, and a backward of its own;
- ``matmul_stats``: the per-channel sums as matrix products (extern kernels for the compiler), the rest generated;
- ``view_stats``: the sums over the 48-wide rows, generated too, the normalisation in the tensor's own layout;
- ``opaque_stats``: those sums as custom ops of ATen calls (one pass each), the rest generated;
- inductor settings, each compiled with only that one changed: ``dynamic_threads``, ``aggressive_fusion``,
  ``no_split_reductions``, ``no_tiling``, ``no_horizontal_fusion``, ``max_fusion_1``, ``fp_contract``,
  ``realize_reads_1``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn as nn
from torch import Tensor

from _timing import add_no_amp, cpu_amp_dtype, precision_name, print_quartiles, round_robin_steps
from moderncnn import create_model
from moderncnn.layers import use_row_stacked
from moderncnn.recipes import get_recipe
from moderncnn.train import build_loss, build_optimizer, init_weights, make_train_step

SETTINGS = {
    "dynamic_threads": {"cpp.dynamic_threads": True},
    "aggressive_fusion": {"aggressive_fusion": True},
    "no_split_reductions": {"split_reductions": False},
    "no_tiling": {"cpp.enable_tiling_heuristics": False},
    "no_horizontal_fusion": {"cpp.max_horizontal_fusion_size": 0},
    "max_fusion_1": {"max_fusion_size": 1},
    "fp_contract": {"cpp.enable_floating_point_contract_flag": "fast"},
    "realize_reads_1": {"realize_reads_threshold": 1},
}
VARIANTS = ("plain", "eager_op", "matmul_stats", "view_stats", "opaque_stats", *SETTINGS)


def _acc(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _rows(x: Tensor) -> Tensor:
    """channels_last ``x`` as ``[N*H*W/r, r*C]``: r pixels a row, so that a row fills whole 16-lane vectors."""
    n, c, h, w = x.shape
    r = 16 // math.gcd(c, 16)
    return x.permute(0, 2, 3, 1).reshape(n * h * w // r, r * c)


@torch.library.custom_op("moderncnn_bench::narrow_bn", mutates_args=())
def narrow_bn(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    c = x.shape[1]
    xr = _rows(x)
    r, p = xr.shape[1] // c, xr.numel() // c
    mean = torch.sum(xr, 0, dtype=_acc(x)).view(r, c).sum(0) / p
    d = xr.to(_acc(x)) - mean.repeat(r)
    var = torch.sum(d * d, 0).view(r, c).sum(0) / p
    y = torch.empty_like(x)
    scale = weight.to(_acc(x)) * torch.rsqrt(var + eps)
    torch.addcmul(bias.to(_acc(x)).repeat(r), d, scale.repeat(r), out=_rows(y))
    return y, mean, var


@narrow_bn.register_fake
def _(x, weight, bias, eps):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty(c, dtype=_acc(x)), x.new_empty(c, dtype=_acc(x))


@torch.library.custom_op("moderncnn_bench::narrow_bn_backward", mutates_args=())
def narrow_bn_backward(gy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, var: Tensor,
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    c = x.shape[1]
    gr, xr = _rows(gy.contiguous(memory_format=torch.channels_last)), _rows(x)
    r, p = xr.shape[1] // c, xr.numel() // c
    invstd = torch.rsqrt(var + eps)
    sum_g = torch.sum(gr, 0, dtype=_acc(x)).view(r, c).sum(0)
    d = xr.to(_acc(x)) - mean.repeat(r)
    sum_gd = torch.sum(gr * d, 0).view(r, c).sum(0)
    a = weight.to(_acc(x)) * invstd  # dx = a * gy - b * (x - mean) - a * mean(gy)
    b = a * invstd * invstd * sum_gd / p
    gx = torch.empty_like(x)
    torch.addcmul(torch.addcmul((-a * sum_g / p).repeat(r), d, -b.repeat(r)), gr, a.repeat(r), out=_rows(gx))
    return gx, (sum_gd * invstd).to(weight.dtype), sum_g.to(weight.dtype)


@narrow_bn_backward.register_fake
def _(gy, x, weight, mean, var, eps):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _save(ctx, inputs, output):
    x, weight, _, eps = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])
    ctx.eps = eps


def _narrow_bn_grad(ctx, gy, _gmean, _gvar):
    x, weight, mean, var = ctx.saved_tensors
    return *narrow_bn_backward(gy, x, weight, mean, var, ctx.eps), None


narrow_bn.register_autograd(_narrow_bn_grad, setup_context=_save)


def _channel_sums(rows: Tensor, c: int) -> Tensor:
    """Per-channel sums of a ``_rows`` view: down its columns (whole vectors), then its r pixels a row."""
    return rows.sum(0).view(-1, c).sum(0)


def _stats(x: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of channels_last ``x``, in fp32 (or float64)."""
    n, c, h, w = x.shape
    p = n * h * w
    if how == "matmul_stats":  # extern matrix products, E[x^2] - mean^2
        xs = x.permute(0, 2, 3, 1).reshape(p, c).to(_acc(x))
        mean = (torch.ones(1, p, dtype=xs.dtype) @ xs)[0] / p
        return mean, (torch.diagonal(xs.t() @ xs) / p - mean * mean).clamp_min(0)
    if how == "view_stats":  # generated sums over the 48-wide rows, two passes
        xr = _rows(x).to(_acc(x))
        mean = _channel_sums(xr, c) / p
        return mean, _channel_sums((xr - mean.repeat(xr.shape[1] // c)) ** 2, c) / p
    return channel_moments(x)


def _sums(gy: Tensor, x: Tensor, mean: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """Per channel, the sums of ``gy`` and of ``gy * (x - mean)`` that batch norm's backward needs."""
    n, c, h, w = x.shape
    if how == "matmul_stats":
        g = gy.permute(0, 2, 3, 1).reshape(-1, c).to(_acc(x))
        xc = x.permute(0, 2, 3, 1).reshape(-1, c).to(_acc(x)) - mean
        return (torch.ones(1, g.shape[0], dtype=g.dtype) @ g)[0], torch.diagonal(g.t() @ xc)
    if how == "view_stats":
        gr = _rows(gy.contiguous(memory_format=torch.channels_last)).to(_acc(x))
        return _channel_sums(gr, c), _channel_sums(gr * (_rows(x).to(_acc(x)) - mean.repeat(gr.shape[1] // c)), c)
    return channel_dots(gy, x, mean)


class _StatsBN(torch.autograd.Function):
    """Training batch norm whose statistics and backward sums are computed as ``how`` says; the normalisation
    and the gradient in the tensor's own layout, for the compiler to fuse with the sigmoid and the pooling."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, how):
        c = x.shape[1]
        mean, var = _stats(x, how)
        invstd = torch.rsqrt(var + eps)
        scale, m = (weight.to(_acc(x)) * invstd).view(1, c, 1, 1), mean.view(1, c, 1, 1)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.how = how
        return ((x.to(_acc(x)) - m) * scale + bias.to(_acc(x)).view(1, c, 1, 1)).to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        x, weight, mean, invstd = ctx.saved_tensors
        n, c, h, w = x.shape
        p = n * h * w
        sum_g, sum_gd = _sums(gy, x, mean, ctx.how)
        a = weight.to(_acc(x)) * invstd  # dx = a * gy - b * (x - mean) - a * mean(gy)
        b = a * invstd * invstd * sum_gd / p
        gx = (gy.to(_acc(x)) * a.view(1, c, 1, 1) - (x.to(_acc(x)) - mean.view(1, c, 1, 1)) * b.view(1, c, 1, 1)
              - (a * sum_g / p).view(1, c, 1, 1))
        return gx.to(x.dtype), (sum_gd * invstd).to(weight.dtype), sum_g.to(weight.dtype), None, None


@torch.library.custom_op("moderncnn_bench::channel_moments", mutates_args=())
def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of channels_last ``x``: one pass each for the sums of ``x`` and
    ``x * x`` over the 48-wide rows, accumulated in fp32 (the variance as E[x^2] - mean^2)."""
    c = x.shape[1]
    xr = _rows(x)
    r, p = xr.shape[1] // c, xr.numel() // c
    mean = torch.sum(xr, 0, dtype=_acc(x)).view(r, c).sum(0) / p
    square = torch.sum(xr * xr, 0, dtype=_acc(x)).view(r, c).sum(0) / p
    return mean, (square - mean * mean).clamp_min(0)


@channel_moments.register_fake
def _(x):
    return x.new_empty(x.shape[1], dtype=_acc(x)), x.new_empty(x.shape[1], dtype=_acc(x))


@torch.library.custom_op("moderncnn_bench::channel_dots", mutates_args=())
def channel_dots(g: Tensor, x: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel, the sum of ``g`` and of ``g * (x - mean)``: one pass each over the 48-wide rows."""
    c = x.shape[1]
    gr, xr = _rows(g.contiguous(memory_format=torch.channels_last)), _rows(x)
    r = xr.shape[1] // c
    sum_g = torch.sum(gr, 0, dtype=_acc(x)).view(r, c).sum(0)
    sum_gx = torch.sum(gr * xr, 0, dtype=_acc(x)).view(r, c).sum(0)
    return sum_g, sum_gx - mean * sum_g


@channel_dots.register_fake
def _(g, x, mean):
    return torch.empty_like(mean), torch.empty_like(mean)


class _Narrow(nn.BatchNorm2d):
    how = "eager_op"

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                and x.numel() // x.shape[1] % (16 // math.gcd(x.shape[1], 16)) == 0):
            return super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))
        with torch.autocast("cpu", enabled=False):  # statistics in fp32
            if self.how == "eager_op":
                y, mean, var = narrow_bn(x, self.weight, self.bias, self.eps)
            else:
                y, mean, var = _StatsBN.apply(x, self.weight, self.bias, self.eps, self.how)
        with torch.no_grad():
            p = x.numel() // x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (p / (p - 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        return y


def variant(model: nn.Module, name: str) -> nn.Module:
    # a class of its own: dynamo would otherwise give every variant the first one's compiled code
    model.__class__ = type(f"{type(model).__name__}_{name}", (type(model),), {})
    if name in ("eager_op", "matmul_stats", "view_stats", "opaque_stats"):
        for m in model.modules():
            if type(m) is nn.BatchNorm2d and m.num_features < 16:
                m.__class__ = type("NarrowBatchNorm2d", (_Narrow,), {"how": name})
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet_bn")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--eager", action="store_true", help="time the eager step (inductor settings are left out)")
    add_no_amp(p)
    args = p.parse_args(argv)
    amp_dtype = cpu_amp_dtype(args.no_amp)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; use some of {', '.join(VARIANTS)}")
    if args.eager:
        names = [n for n in names if n not in SETTINGS]
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(names))
    recipe = get_recipe(args.model, "book")
    x = torch.rand(recipe.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (recipe.batch_size,))
    steps = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(args.model, **recipe.model_kwargs)
        model = variant(init_weights(model), name).to(memory_format=torch.channels_last)
        use_row_stacked(model, channels_last=True)
        run = model if args.eager else torch.compile(model, dynamic=False)
        steps[name] = make_train_step(run, build_optimizer(model, recipe), build_loss(recipe),
                                      amp_dtype=amp_dtype)
        with inductor_config.patch(SETTINGS.get(name, {})):  # read when the graphs compile
            for _ in range(3):
                steps[name](x, y)
    times = round_robin_steps(steps, x, y, args.rounds, per_round=8)
    print_quartiles(f"{args.model} {'eager' if args.eager else 'compiled'}, {precision_name(amp_dtype)}", times)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
