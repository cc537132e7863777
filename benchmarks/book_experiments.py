r"""The book's chapter-7 experiments on a borrowed machine: ``moderncnn reproduce``, and the small files brought back.

    python benchmarks/book_experiments.py [EXPERIMENT ...] --out DIR [--seeds N] [--scale book|cpu] \
        [--time-budget S] [--data-dir D] [--device cuda] [--export DIR]

The sweep and its report are the library's (:func:`moderncnn.reproduce.reproduce`, docs/reproduce.md): each
(experiment, seed) one run directory under ``--out``, a finished run read back, an interrupted one resumed.
For a machine whose calls are cut off (the lent GPU: 10 minutes a call), ``--time-budget S`` starts no run
after S seconds, and ``--export DIR`` copies each run's small files (run.json, metrics.jsonl, curves.png; not
the weights) to DIR, the same layout as ``--out``, and writes the report there: ``moderncnn reproduce
--report-only DIR`` rebuilds it anywhere.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _cli import add_data_dir

from moderncnn.recipes import BOOK_RECIPES
from moderncnn.reproduce import SCALES, reproduce
from moderncnn.reproduce_report import MANIFEST, write_report

SMALL_FILES = ("run.json", "metrics.jsonl", "curves.png")


def export(out: Path, dest: Path) -> Path:
    """Every run's small files (and the sweep's manifest) copied from ``out`` to ``dest``; the report written
    there; its path."""
    for run_json in sorted(out.glob("*/run.json")):
        target = dest / run_json.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run_json.parent / name).is_file():
                shutil.copy2(run_json.parent / name, target / name)
    if (out / MANIFEST).is_file():
        shutil.copy2(out / MANIFEST, dest / MANIFEST)
    return write_report(dest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help=f"the experiments to run (default: all nine: {', '.join(BOOK_RECIPES)})")
    p.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder: its run directories and report")
    p.add_argument("--seeds", type=int, default=1, help="runs per experiment, seeds 0..N-1 (default %(default)s)")
    p.add_argument("--scale", choices=SCALES, default="book",
                   help="book: the book's recipes (default); cpu: sized for a 2-core CPU (docs/reproduce.md)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="start no run after S seconds (what is finished is still reported)")
    add_data_dir(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    p.add_argument("--export", metavar="DIR",
                   help="copy every run's run.json, metrics.jsonl and curves.png here, and write the report here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = reproduce(args.experiments or None, args.out, seeds=args.seeds, scale=args.scale,
                       time_budget=args.time_budget, data_dir=args.data_dir, device=args.device, download=False)
    print(f"report: {result.report}")
    if args.export:
        print(f"exported: {export(Path(args.out), Path(args.export))}")


if __name__ == "__main__":
    import _cli

    _cli.run(main)
