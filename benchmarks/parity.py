"""Accuracy parity with the book's own code: N seeds of d2l's ``train_ch6`` and N of ``moderncnn train``.

    python benchmarks/parity.py [--models lenet,lenet_bn,lenet_bn_scratch] [--seeds 5] [--epochs 10]
        [--variant NAME=ARGS] [--book-from JSON] [--workers 0] [--subset N] [--device cpu] [--data-dir DIR] [--machine NAME] [--json FILE]

For each model and seed, the book's pipeline (``reference_pipeline.py``: torchvision's FashionMNIST, its
DataLoader, Xavier init, plain SGD, fp32) and moderncnn's book recipe each train a whole run from that
torch seed, one process a run, interleaved seed by seed; ``--variant NAME=ARGS`` adds ``moderncnn train``
with extra arguments (``fp32="--no-amp"``, ``nofold="--speed fold_bn=off"``): the ablations that find what
moves the accuracy. The two sides draw different random numbers from the same seed, so runs are compared as
distributions, not seed by seed.

Prints, per model, each side's final test accuracy (mean +- sd, min-max), its mean over the last 3 epochs
(steadier: at the book's lr a run's test accuracy swings by points from epoch to epoch) and the train loss,
and each side's difference from the book with a 95% bootstrap confidence interval of the difference of the
means: an interval that holds 0 (or lies above it) is parity. Writes the runs as JSON
(``docs/results/<machine>/parity-<date>.json`` unless ``--json``).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from moderncnn.evaluate import select_device
from _cli import add_result_options, model_names
from _results import write
from reference_pipeline import torchvision_root
from whole_runs import add_run_options, command, run_once

RESAMPLES = 10_000
LATE_EPOCHS = 3


def difference(ours: list[float], book: list[float], resamples: int = RESAMPLES) -> dict[str, float]:
    """mean(ours) - mean(book), with the 2.5th and 97.5th percentiles of that difference over bootstrap
    resamples of each side (a fixed seed: the same runs always give the same interval)."""
    rng = random.Random(0)
    diffs = sorted(statistics.fmean(rng.choices(ours, k=len(ours))) - statistics.fmean(rng.choices(book, k=len(book)))
                   for _ in range(resamples))
    return {"mean": statistics.fmean(ours) - statistics.fmean(book), "low": diffs[int(0.025 * resamples)],
            "high": diffs[int(0.975 * resamples) - 1]}


def summary(runs: list[dict]) -> dict[str, float]:
    acc = [r["test_acc"] for r in runs]
    late = lates(runs)
    return {"test_acc_mean": statistics.fmean(acc), "test_acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "test_acc_min": min(acc), "test_acc_max": max(acc),
            "late_test_acc_mean": statistics.fmean(late) if late else None,
            "late_test_acc_sd": statistics.stdev(late) if len(late) > 1 else None,
            "loss_mean": statistics.fmean(r["loss"] for r in runs)}


def lates(runs: list[dict]) -> list[float]:
    """:func:`late_accuracy` of every run that kept its history (results before 2ae35a4 did not)."""
    return [late_accuracy(r) for r in runs if "test_acc_history" in r]


def late_accuracy(run: dict, epochs: int = LATE_EPOCHS) -> float:
    """A run's test accuracy averaged over its last ``epochs`` epochs: at the book's lr the last epoch's figure
    swings by points from one epoch to the next, and this is a steadier measure of where the run ended."""
    history = run["test_acc_history"][-epochs:]
    return statistics.fmean(history)


def book_runs(path: str, name: str, seeds: list[int], epochs: int) -> list[dict]:
    """The book's runs of ``name`` for ``seeds`` from an earlier parity JSON (``--book-from``): the book's side
    does not change with ours, and it is the slower half of the benchmark."""
    earlier = json.loads(Path(path).read_text())
    if earlier.get("benchmark") != "parity" or earlier.get("epochs") != epochs or earlier.get("subset"):
        raise ValueError(f"{path} is not a parity result of {epochs} epochs on the whole training set")
    found = {r["seed"]: r for row in earlier["results"] if row["model"] == name for r in row["runs"]["book"]}
    missing = [s for s in seeds if s not in found]
    if missing:
        raise ValueError(f"{path} has no book run of {name} for seed(s) {missing}: run without --book-from")
    return [found[s] for s in seeds]


def run_model(name: str, args: argparse.Namespace, work: Path, root: Path) -> dict:
    kinds: dict[str, list[str]] = {"book": ["<book>"], "moderncnn": []}
    for text in args.variant or []:
        label, _, extra = text.partition("=")
        kinds[label] = extra.split()
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    seeds = list(range(args.seed, args.seed + args.seeds))
    if args.book_from:
        runs["book"] = book_runs(args.book_from, name, seeds, args.epochs)
    for seed in seeds:
        for variant, extra in kinds.items():
            if variant == "book" and args.book_from:
                continue
            cmd, env = command(name, extra, _with_seed(args, seed), work / "run", root)
            runs[variant].append({"seed": seed, **run_once(cmd, env, work / "run", variant)})
            print(f"{name} seed {seed} {variant}: test acc {runs[variant][-1]['test_acc']:.3f} "
                  f"({runs[variant][-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    stats = {k: summary(rs) for k, rs in runs.items()}
    diffs = {k: {"test_acc": difference([r["test_acc"] for r in rs], [r["test_acc"] for r in runs["book"]]),
                 "late_test_acc": difference(lates(rs), lates(runs["book"])) if lates(rs) and lates(runs["book"])
                 else None}
             for k, rs in runs.items() if k != "book"}
    print(f"\n{name}: {args.epochs} epochs, seeds {args.seed}-{args.seed + args.seeds - 1}; 95% CI of the difference "
          f"from the book's mean; late: the mean of each run's last {LATE_EPOCHS} epochs\n"
          "| pipeline | test acc mean +- sd | min-max | minus the book's | late test acc | minus the book's | "
          "train loss |\n|---|---|---|---|---|---|---|")
    for k, s in stats.items():
        d = diffs.get(k)
        vs = [f"{e['mean']:+.3f} ({e['low']:+.3f} to {e['high']:+.3f})" if e else "-" for e in d.values()] \
            if d else ["-", "-"]
        late = f"{s['late_test_acc_mean']:.3f} +- {s['late_test_acc_sd'] or 0:.3f}" \
            if s["late_test_acc_mean"] is not None else "-"
        print(f"| {k} | {s['test_acc_mean']:.3f} +- {s['test_acc_sd']:.3f} | {s['test_acc_min']:.3f}-"
              f"{s['test_acc_max']:.3f} | {vs[0]} | {late} | {vs[1]} | {s['loss_mean']:.3f} |", flush=True)
    return {"model": name, "variants": {k: " ".join(v) for k, v in kinds.items()}, "summary": stats,
            "difference_from_book": diffs, "runs": runs}


def _with_seed(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    one = argparse.Namespace(**vars(args))
    one.seed = seed
    return one


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--seeds", type=int, default=5, metavar="N",
                   help="how many seeds a side, at least 2 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default %(default)s)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="epochs of every run (default %(default)s)")
    p.add_argument("--variant", action="append", metavar="NAME=ARGS",
                   help="also moderncnn with these extra arguments, e.g. fp32='--no-amp' (repeatable)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="the book DataLoader's workers (d2l: 4; the default 0 trains on the same batches, since the "
                        "sampler and the workers' seed are drawn in this process either way, without the workers' start-up)")
    p.add_argument("--book-from", metavar="JSON", help="the book's runs from an earlier parity result (same seeds and "
                                                          "epochs) instead of running them again")
    p.add_argument("--subset", type=int, metavar="N",
                   help="train on N training images only (the book: the first N; moderncnn: a class-balanced "
                        "sample): a quick check, not parity")
    add_result_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    args.models = model_names(args.models)
    if args.book_from and args.subset:
        p.error("--book-from holds runs on the whole training set: leave out --subset")
    if args.seeds < 2:
        p.error("--seeds must be at least 2: one run a side has no spread to compare")
    if not Path(args.data_dir).is_dir():
        p.error(f"no folder {args.data_dir}: pass --data-dir DIR, a folder with Fashion-MNIST's .gz files")
    # whole_runs.command reads these: parity runs at the recipe's size, in its precision, on the whole test set
    args.fp32, args.test_subset, args.resize = False, None, None
    device = select_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="moderncnn-parity-"))
    try:
        root = torchvision_root(Path(args.data_dir), work)
        results = [run_model(name, args, work, root) for name in args.models]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write({"epochs": args.epochs, "subset": args.subset, "book_from": args.book_from, "seeds": list(range(args.seed, args.seed + args.seeds)), "workers": args.workers,
           "results": results}, "parity", device, args.machine, args.json)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
