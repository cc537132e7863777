"""Batch norm folded into the single-channel convolution before it: what it saves on the CPU.

    python benchmarks/cpu_fold_bn.py [--models lenet_bn,lenet_bn_scratch] [--rounds 12] [--compile] [--no-amp]

For each book recipe's model with such a pair (``moderncnn.layers.foldable_pairs``), at the recipe's batch size,
on random grey images, the trainer's train step (bf16 autocast where the CPU has bf16 in hardware, else fp32,
as the trainer picks it; stacked rows; ``--no-amp``: fp32) is built three ways and timed round-robin in one
process, so that this machine's drift hits them alike:

- ``before``: the trainer's CPU settings before folding: eagerly NCHW (batch norm over 6 channels is slow in
  channels_last), compiled channels_last; the matmul pooling eagerly only;
- ``fold``: today's ``default_speed``: the batch norm folded, channels_last, the matmul pooling;
- ``fold_nchw``: folded, with the matmul pooling, in NCHW (eagerly only: does the layout still matter?).

It prints the median and first quartile of each, and the largest difference between ``before`` and ``fold``'s
parameter gradients on one batch in float64, relative to the largest gradient (rounding: ~1e-15). The
trainer's CPU default rests on these figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from _cli import model_names
from _timing import add_no_amp, cpu_amp_dtype, precision_name, print_quartiles, round_robin_steps
from moderncnn import create_model
from moderncnn.layers import foldable_pairs, use_folded_bn, use_patch_pool, use_row_stacked
from moderncnn.recipes import get_recipe
from moderncnn.train import build_loss, build_optimizer, compiled, init_weights, make_train_step

DEFAULT_MODELS = "lenet_bn,lenet_bn_scratch"


def _model(name: str, variant: str, channels_last: bool, rows: bool) -> nn.Module:
    recipe = get_recipe(name, "book")
    torch.manual_seed(0)
    model = init_weights(create_model(name, num_classes=10, in_channels=1, **recipe.model_kwargs))
    # a class of its own: dynamo would otherwise give every variant the first one's compiled code
    model.__class__ = type(f"{type(model).__name__}_{variant}", (type(model),), {})
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if rows:
        use_row_stacked(model, channels_last)
    return model


def _gradient_difference(name: str) -> float:
    """Largest |difference| of the parameter gradients, plain against folded, float64, relative."""
    recipe = get_recipe(name, "book")
    torch.manual_seed(1)
    x, y = torch.rand(64, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (64,))
    grads = []
    for fold in (False, True):
        model = _model(name, "grad", False, False).double()
        if fold:
            use_folded_bn(model)
        build_loss(recipe)(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    # over the largest gradient of all: the convolution's bias has none but rounding (batch norm removes it)
    return (max((a - b).abs().max() for a, b in zip(*grads)) / max(a.abs().max() for a in grads[0])).item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default: {DEFAULT_MODELS})")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--compile", action="store_true", help="time the compiled step (one graph per variant)")
    add_no_amp(p)
    args = p.parse_args(argv)
    amp_dtype = cpu_amp_dtype(args.no_amp)
    device = torch.device("cpu")
    for name in model_names(args.models):
        recipe = get_recipe(name, "book")
        if not foldable_pairs(create_model(name, in_channels=1, **recipe.model_kwargs)):
            print(f"{name}: no batch norm after a single-channel convolution", flush=True)
            continue
        x = torch.rand(recipe.batch_size, 1, 28, 28)
        y = torch.randint(0, 10, (recipe.batch_size,))
        variants = {"before": (args.compile, False, not args.compile), "fold": (True, True, True)}
        if not args.compile:
            variants["fold_nchw"] = (False, True, True)
        steps = {}
        for variant, (cl, fold, pool) in variants.items():
            model = _model(name, variant, cl, amp_dtype is not None)
            if fold:
                use_folded_bn(model)
            if pool:
                use_patch_pool(model)
            steps[variant] = make_train_step(compiled(model, "default" if args.compile else None, device),
                                             build_optimizer(model, recipe, device), build_loss(recipe),
                                             amp_dtype=amp_dtype)
            for _ in range(3):  # compiled: its graph
                steps[variant](x, y)
        times = round_robin_steps(steps, x, y, args.rounds, per_round=8)
        print_quartiles(f"{name} ({precision_name(amp_dtype)}{', compiled' if args.compile else ''})", times)
        before, fold = (sorted(times[v])[len(times[v]) // 2] for v in ("before", "fold"))
        print(f"{name}: before/fold {before / fold:.2f}x (medians); max relative gradient difference "
              f"{_gradient_difference(name):.1e}", flush=True)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
