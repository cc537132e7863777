"""The book's chapter-7 experiments over several seeds: mean and spread, beside the book's figures.

    python benchmarks/book_experiments.py --data-dir DIR --seeds 0,1,2 [--models lenet,alexnet] \
        [--device cuda] [--recipe book] [--out runs/book] [--markdown docs/out.md] [--compile-mode MODE] \
        [--epochs N] [--subset N] [--test-subset N] [--resize N]

Each (model, seed) is one ``moderncnn.fit`` run with its own run directory
under ``--out`` (an existing finished run is read back, not trained again, so
an interrupted sweep continues where it stopped). The table gives test accuracy
mean +- standard deviation and min-max over seeds, and the median examples/sec.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from moderncnn import fit
from moderncnn.recipes import BOOK_FIGURES, BOOK_RECIPES
from moderncnn.train import COMPILE_MODES


def run_one(model: str, seed: int, args: argparse.Namespace, overrides: dict) -> dict:
    run_dir = Path(args.out) / f"{model}-{args.recipe}-seed{seed}"
    meta_path = run_dir / "run.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("status") == "finished":
            return meta["final"]
    result = fit(model, args.recipe, run_dir, args.device, seed=seed, data_dir=args.data_dir, download=False,
                 quiet=True, resume=meta_path.exists(), compile=args.compile_mode or False, **overrides)
    return result.final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--models", default=",".join(BOOK_RECIPES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--recipe", default="book", choices=("book", "modern"))
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/book-experiments")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int)
    p.add_argument("--test-subset", type=int, help="test on this many test images (a class-balanced sample)")
    p.add_argument("--resize", type=int, help="train at this size instead of the recipe's (the model must accept it)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile every run in this mode")
    args = p.parse_args(argv)
    overrides = {k: v for k in ("epochs", "subset", "test_subset", "resize") if (v := getattr(args, k)) is not None}
    seeds = [int(s) for s in args.seeds.split(",")]

    lines = [f"{args.recipe} recipe, seeds {args.seeds}" + (f", overrides {overrides}" if overrides else ""), "",
             "| experiment | test acc mean +- sd | min-max | train loss mean | ex/s (median) | book zh / en test |",
             "|---|---|---|---|---|---|"]
    for model in args.models.split(","):
        finals = [run_one(model, s, args, overrides) for s in seeds]
        acc = [f["test_acc"] for f in finals]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        book = BOOK_FIGURES.get(model, {})
        book_acc = " / ".join(f"{f.test_acc:.3f}" for f in book.values()) or "-"
        lines.append(f"| {model} | {statistics.mean(acc):.3f} +- {sd:.3f} | {min(acc):.3f}-{max(acc):.3f} | "
                     f"{statistics.mean(f['loss'] for f in finals):.3f} | "
                     f"{statistics.median(f['examples_per_sec'] for f in finals):,.0f} | {book_acc} |")
        print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
