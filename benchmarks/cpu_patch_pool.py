"""Average pooling over non-overlapping patches with the matmul backward: what it saves on the CPU.

    python benchmarks/cpu_patch_pool.py [--models lenet,lenet_bn,...] [--rounds 10] [--compile] [--no-amp]

For each book recipe's model with an ``nn.AvgPool2d`` whose window is its stride, at the recipe's batch size
and image size, on random grey images, one trainer train step (bf16 autocast where the CPU has it in hardware,
channels_last and stacked rows as the trainer picks them; ``--no-amp``: fp32) is timed round-robin in one
process, so that this machine's drift hits both variants alike:

- ``plain``: ``nn.AvgPool2d`` as built (PyTorch's ``avg_pool2d_backward``, or what the compiler makes of it);
- ``patch``: the same layers as ``moderncnn.layers.PatchAvgPool2d`` (the backward as a matmul and a broadcast).

It prints the median and first quartile of each and the largest difference between the two variants'
parameter gradients on one batch (the same numbers are expected: 0). The trainer's CPU default rests on
these figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from _cli import model_names
from _timing import add_no_amp, book_model_and_batch, precision_name, round_robin
from moderncnn.layers import restore_avg_pool2d, use_patch_pool, use_row_stacked
from moderncnn.train import build_loss, build_optimizer, compiled, make_train_step

DEFAULT_MODELS = "lenet,lenet_bn,lenet_bn_scratch,densenet_book"


def _gradients(model, loss_fn, x, y, amp_dtype) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = loss_fn(model(x), y)
    loss.backward()
    grads = [p.grad.detach().float().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default: {DEFAULT_MODELS})")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=0, help="steps per round (default: 8 at 28 px, else 1)")
    p.add_argument("--compile", action="store_true", help="time the compiled step (one graph per variant)")
    add_no_amp(p)
    args = p.parse_args(argv)
    device = torch.device("cpu")
    for name in model_names(args.models):
        recipe, model, speed, x, y = book_model_and_batch(name, args.compile)
        pools = use_patch_pool(model)
        restore_avg_pool2d(pools)
        if not pools:
            print(f"{name}: no average pooling over non-overlapping patches", flush=True)
            continue
        amp_dtype = None if args.no_amp else speed["amp_dtype"]
        cl, size = speed["channels_last"], x.shape[-1]
        if speed["row_stacked"] and amp_dtype is not None:
            use_row_stacked(model, cl)
        loss_fn = build_loss(recipe)
        # compiled, each variant's class fails the other's guards once and gets a graph of its own
        step = make_train_step(compiled(model, "default" if args.compile else None, device),
                               build_optimizer(model, recipe, device), loss_fn, amp_dtype=amp_dtype)

        def patch() -> Callable[[], None]:
            use_patch_pool(model)
            return lambda: restore_avg_pool2d(pools)

        times = round_robin(step, x, y, {"plain": lambda: lambda: None, "patch": patch}, args.rounds,
                            args.steps or (8 if size <= 32 else 1))
        plain = _gradients(model, loss_fn, x[:32], y[:32], amp_dtype)
        use_patch_pool(model)
        ours = _gradients(model, loss_fn, x[:32], y[:32], amp_dtype)
        restore_avg_pool2d(pools)
        diff = max((a - b).abs().max().item() for a, b in zip(plain, ours))
        stats = {v: (sorted(t)[len(t) // 2], sorted(t)[len(t) // 4]) for v, t in times.items()}
        print(f"{name} (batch {recipe.batch_size}, {size} px, {precision_name(amp_dtype)}, channels_last {cl}"
              f"{', compiled' if args.compile else ''}, {len(pools)} pooling layers): "
              + ", ".join(f"{v} {med:.1f} ms (first quartile {q1:.1f})" for v, (med, q1) in stats.items())
              + f"; plain/patch {stats['plain'][0] / stats['patch'][0]:.2f}x; max |gradient difference| {diff:.1e}",
              flush=True)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
