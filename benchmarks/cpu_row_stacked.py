"""Single-channel convolutions (every grey-image model's first) over stacked rows: what they save on the CPU.

    python benchmarks/cpu_row_stacked.py [--models lenet,alexnet,...] [--rounds 3] [--compile]

For each book recipe's model, at the recipe's batch size and image size, on random grey images, one
trainer train step (bf16 autocast, where the CPU has it in hardware, and channels_last as the trainer
picks them) is timed round-robin in one process, so that this machine's drift hits every variant alike:

- ``plain``: the model as built (oneDNN's single-channel convolution);
- ``rows``: its single-channel convolutions computed over stacked rows, in the model's memory format;
- ``rows-other``: the same with the stacked rows in the other memory format.

It also prints the largest difference between the plain and the row-stacked model's outputs.

``--profile N`` also times the first convolution alone inside the step (its operations' self time in
torch.profiler), which the rest of the step's noise does not reach. The trainer computes single-channel
convolutions over stacked rows on the CPU (with bf16) because of these figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn as nn

from _cli import model_names
from _timing import book_model_and_batch, round_robin
from moderncnn.layers.rowconv import row_stackable, restore_conv2d, use_row_stacked
from moderncnn.recipes import BOOK_RECIPES
from moderncnn.train import build_loss, build_optimizer, compiled, make_train_step


def _stem_ms(step, x, y, stem: nn.Conv2d) -> float:
    """Self CPU time of one step's operations on the stem's input (its convolution forward and backward,
    and for stacked rows the padding and the stacking), from torch.profiler: the rest of the step's noise
    does not enter."""
    from torch.profiler import ProfilerActivity, profile

    kh = stem.kernel_size[0]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(x, y)

    def on_stem(shapes: list) -> bool:
        return any(len(s) == 4 and s[0] == x.shape[0] and s[1] in (1, kh) for s in shapes if isinstance(s, list))

    ops = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::cat", "aten::constant_pad_nd",
           "aten::copy_", "aten::slice_backward", "aten::add_")
    return sum(e.self_cpu_time_total for e in prof.key_averages(group_by_input_shape=True)
               if e.key in ops and on_stem(e.input_shapes or [])) / 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(BOOK_RECIPES), help="comma-separated (default: the book recipes)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="steps per round (default: 8 at 28 px, else 1)")
    p.add_argument("--compile", action="store_true", help="time the compiled step (one graph per variant)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N steps of plain and rows, alternating, and print the time spent on the stem")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    for name in model_names(args.models):
        recipe, model, speed, x, y = book_model_and_batch(name, args.compile)
        cl, size = speed["channels_last"], x.shape[-1]
        optimizer = build_optimizer(model, recipe, device)
        loss_fn = build_loss(recipe)
        variants = {"plain": None, "rows": cl, "rows-other": not cl}
        # compiled, each variant's class fails the others' guards once and gets a graph of its own
        step = make_train_step(compiled(model, "default" if args.compile else None, device), optimizer, loss_fn,
                               amp_dtype=speed["amp_dtype"])

        def switch(variant: str) -> Callable[[], Callable[[], None]]:
            def to() -> Callable[[], None]:
                converted = use_row_stacked(model, variants[variant]) if variants[variant] is not None else []
                return lambda: restore_conv2d(converted)
            return to

        times = round_robin(step, x, y, {v: switch(v) for v in variants}, args.rounds,
                            args.steps or (8 if size <= 32 else 1))
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=speed["amp_dtype"] or torch.float32,
                                                  enabled=speed["amp_dtype"] is not None):
            plain = model(x[:8]).float()
            converted = use_row_stacked(model, cl)
            rows = model(x[:8]).float()
            restore_conv2d(converted)
        model.train()
        stem_ms: dict[str, list[float]] = {"plain": [], "rows": []}
        stem = next(m for m in model.modules() if row_stackable(m))
        for _ in range(args.profile):
            for variant in stem_ms:
                converted = use_row_stacked(model, variants[variant]) if variants[variant] is not None else []
                stem_ms[variant].append(_stem_ms(step, x, y, stem))
                restore_conv2d(converted)
        med = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
        print(f"{name} (batch {recipe.batch_size}, {size} px, channels_last {cl}{', compiled' if args.compile else ''}"
              f", {len(converted)} conv): " + ", ".join(f"{v} {m:.1f} ms" for v, m in med.items())
              + f"; plain/rows {med['plain'] / med['rows']:.2f}x; max |output difference| "
              f"{(plain - rows).abs().max().item():.1e}"
              + ("; stem alone (profiled): " + ", ".join(f"{v} {sorted(t)[len(t) // 2]:.1f} ms" for v, t in stem_ms.items())
                 if args.profile else ""), flush=True)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
