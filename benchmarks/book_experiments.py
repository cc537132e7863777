r"""The book's chapter-7 experiments over several seeds: mean and spread, beside the book's figures.

    python benchmarks/book_experiments.py --data-dir DIR --seeds 0,1,2 [--models lenet,alexnet] \
        [--device cuda] [--recipe book] [--out runs/book] [--markdown docs/out.md] [--compile-mode MODE] \
        [--epochs N] [--subset N] [--test-subset N] [--resize N] [--time-budget S] [--export DIR]

Each (model, seed) is one ``moderncnn.fit`` run with its own run directory
under ``--out`` (an existing finished run is read back, not trained again, so
an interrupted sweep continues where it stopped). The table, printed row by row
(``--markdown FILE``: also written there), gives test accuracy mean +- standard
deviation and min-max over seeds, and the median examples/sec.

For a borrowed machine whose calls are cut off (the lent GPU: 10 minutes a
call): ``--time-budget S`` starts no new run after S seconds and tabulates what
is finished; ``--export DIR`` copies each finished run's small files (run.json,
metrics.jsonl, curves.png; not the weights) to DIR, the same layout as
``--out``, so a later ``--out DIR`` tabulates them without training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from _cli import model_names
from moderncnn import fit
from moderncnn.recipes import BOOK_FIGURES, BOOK_RECIPES
from moderncnn.train import COMPILE_MODES


SMALL_FILES = ("run.json", "metrics.jsonl", "curves.png")


def run_one(model: str, seed: int, args: argparse.Namespace, overrides: dict, deadline: float) -> dict | None:
    """The run's final figures: read back if finished, else trained now; None once past ``deadline``."""
    run_dir = Path(args.out) / f"{model}-{args.recipe}-seed{seed}"
    meta_path = run_dir / "run.json"
    final = None
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("status") == "finished":
            final = meta["final"]
    if final is None:
        if time.monotonic() > deadline:
            return None
        final = fit(model, args.recipe, run_dir, args.device, seed=seed, data_dir=args.data_dir, download=False,
                    quiet=True, resume=meta_path.exists(), compile=args.compile_mode or False, **overrides).final
    if args.export:
        dest = Path(args.export) / run_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run_dir / name).exists() and (run_dir / name).resolve() != (dest / name).resolve():
                shutil.copy2(run_dir / name, dest / name)
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, metavar="DIR",
                   help="a folder with Fashion-MNIST's .gz files (nothing is downloaded)")
    p.add_argument("--models", default=",".join(BOOK_RECIPES),
                   help="comma-separated models (default: every model with a book recipe)")
    p.add_argument("--seeds", default="0,1,2",
                   help="comma-separated seeds, one run each per model (default %(default)s)")
    p.add_argument("--recipe", default="book", choices=("book", "modern"),
                   help="the recipe every run trains with (default %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    p.add_argument("--out", default="runs/book-experiments", metavar="DIR",
                   help="where the run directories go, MODEL-RECIPE-seedN each (default %(default)s)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the table to this file")
    p.add_argument("--epochs", type=int, metavar="N", help="train N epochs instead of the recipe's")
    p.add_argument("--subset", type=int, metavar="N",
                   help="train on N training images only (a fixed, class-balanced sample)")
    p.add_argument("--test-subset", type=int, metavar="N",
                   help="test on this many test images (a class-balanced sample)")
    p.add_argument("--resize", type=int, metavar="PIXELS",
                   help="train at this size instead of the recipe's (the model must accept it)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile every run in this mode")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="start no new run after S seconds (finished runs are still tabulated)")
    p.add_argument("--export", metavar="DIR", help="copy every finished run's run.json, metrics.jsonl and curves.png "
                                                   "here")
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    args.models = model_names(args.models)
    deadline = time.monotonic() + (args.time_budget if args.time_budget is not None else float("inf"))
    overrides = {k: v for k in ("epochs", "subset", "test_subset", "resize") if (v := getattr(args, k)) is not None}
    seeds = [int(s) for s in args.seeds.split(",")]

    lines = [f"{args.recipe} recipe, seeds {args.seeds}" + (f", overrides {overrides}" if overrides else ""), "",
             "| experiment | test acc mean +- sd | min-max | train loss mean | ex/s (median) | book zh / en test |",
             "|---|---|---|---|---|---|"]
    missing = []
    for model in args.models:
        runs = {s: run_one(model, s, args, overrides, deadline) for s in seeds}
        missing += [f"{model} seed {s}" for s, f in runs.items() if f is None]
        finals = [f for f in runs.values() if f is not None]
        if not finals:
            continue
        acc = [f["test_acc"] for f in finals]
        spread = f" +- {statistics.stdev(acc):.3f}" if len(acc) > 1 else ""  # one seed has no spread to show
        book = BOOK_FIGURES.get(model, {})
        book_acc = " / ".join(f"{f.test_acc:.3f}" for f in book.values()) or "-"
        name = model if len(finals) == len(seeds) else \
            f"{model} (seeds {','.join(str(s) for s, f in runs.items() if f is not None)})"
        lines.append(f"| {name} | {statistics.mean(acc):.3f}{spread} | {min(acc):.3f}-{max(acc):.3f} | "
                     f"{statistics.mean(f['loss'] for f in finals):.3f} | "
                     f"{statistics.median(f['examples_per_sec'] for f in finals):,.0f} | {book_acc} |")
        print(lines[-1], flush=True)
    if missing:
        lines += ["", f"not run (--time-budget {args.time_budget:g} s spent): {', '.join(missing)}"]
        print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import _cli

    _cli.run(main)
