"""Whole book experiments, end to end, one process a run: what a reader waits for, and what each speed option
is worth there.

    python benchmarks/whole_runs.py [--models lenet,lenet_bn] [--epochs 10] [--repeats 3] [--book] [--ablate]
        [--baseline SRC] [--variant NAME=ARGS] [--fp32] [--subset N] [--test-subset N] [--device cpu] [--machine NAME] [--json FILE]

Each run is a command of its own, timed from its start to its exit (the data files read, every epoch
trained and tested, the checkpoints written). The variants, run once each a round, in an order that rotates
from round to round so that the machine's drift hits them alike:

- ``moderncnn``: ``moderncnn train MODEL`` with the defaults of this kind of machine;
- ``book`` (``--book``): d2l's ``load_data_fashion_mnist`` + ``train_ch6`` (``reference_pipeline.py``);
- ``baseline`` (``--baseline SRC``): the same ``moderncnn train`` command with another checkout's code
  (``SRC`` first on PYTHONPATH: a worktree's ``src``): a change's whole runs, before and after;
- ``NAME`` (``--variant NAME=ARGS``): ``moderncnn train MODEL ARGS``, e.g. ``fp32="--no-amp"``;
- ``OPTION=off`` (``--ablate``): ``moderncnn train MODEL --speed OPTION=off`` for each speed option the policy
  turns on for this model here, and ``--no-malloc``: an option stays on by default only where it makes the
  whole run at least 1.1x faster (moderncnn.train.speed).

Prints a table (median seconds, ratio to ``moderncnn``, test accuracies) and writes the runs as JSON
(``docs/results/<machine>/whole-runs-<date>.json`` unless ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import moderncnn
from moderncnn.cpumem import glibc_malloc
from moderncnn.evaluate import select_device
from moderncnn.recipes import get_recipe
from moderncnn.train import SPEED_OPTIONS, plan_speed
from _cli import add_data_dir, add_result_options, model_names
from _results import spread, write
from reference_pipeline import torchvision_root

HERE = Path(__file__).resolve().parent
LENETS = "lenet,lenet_bn,lenet_bn_scratch"


def variants(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, list[str]]:
    """Each variant's extra arguments to ``moderncnn train`` (the book's and the baseline's are marked)."""
    out: dict[str, list[str]] = {"moderncnn": []}
    if args.book:
        out["book"] = ["<book>"]
    if args.baseline:
        out["baseline"] = ["<baseline>"]
    for text in args.variant or []:
        label, _, extra = text.partition("=")
        out[label] = extra.split()
    if args.ablate:
        recipe = get_recipe(name, "book")
        model = moderncnn.create_model(name, num_classes=10, in_channels=1, **recipe.model_kwargs)
        plan = plan_speed(device, model, image_size=args.resize or recipe.resize or 28,
                          overrides={"amp": False} if args.fp32 else None)
        for option in SPEED_OPTIONS:
            if getattr(plan, option) and not (args.fp32 and option == "amp"):
                out[f"{option}=off"] = ["--speed", f"{option}=off"]
        if device.type == "cpu" and glibc_malloc():
            out["malloc=off"] = ["--no-malloc"]
    return out


def command(name: str, extra: list[str], args: argparse.Namespace, run_dir: Path, root: Path | None) -> tuple:
    """The command line and environment of one run."""
    env = dict(os.environ)
    if extra == ["<book>"]:
        cmd = [sys.executable, str(HERE / "reference_pipeline.py"), name, "--root", str(root), "--epochs",
               str(args.epochs), "--seed", str(args.seed), "--workers", str(args.workers), "--device", str(args.device)]
        return cmd + (["--subset", str(args.subset)] if args.subset else []), env
    if extra == ["<baseline>"]:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.baseline).resolve()), env.get("PYTHONPATH", "")])
        extra = []
    cmd = [sys.executable, "-m", "moderncnn", "train", name, "--data-dir", args.data_dir, "--no-download", "--quiet",
           "--out", str(run_dir), "--overwrite", "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--device", str(args.device), *(["--no-amp"] if args.fp32 else []), *extra]
    for flag, value in (("--subset", args.subset), ("--test-subset", args.test_subset), ("--resize", args.resize)):
        if value:
            cmd += [flag, str(value)]
    return cmd, env


def run_once(cmd: list[str], env: dict, run_dir: Path, variant: str) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"the {variant} run failed ({last})")
    if cmd[1].endswith("reference_pipeline.py"):
        final = json.loads(done.stdout.strip().splitlines()[-1])
        history = final["test_acc_history"]
    else:
        final = json.loads((run_dir / "run.json").read_text())["final"]
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        history = [json.loads(line)["test_acc"] for line in lines if line.strip()]
    return {"seconds": seconds, **{k: final[k] for k in ("loss", "train_acc", "test_acc", "examples_per_sec")},
            "test_acc_history": history}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every run's command (:func:`command`), here and in parity.py, and which models to run."""
    add_data_dir(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps, for every run (default %(default)s)")
    p.add_argument("--models", default=LENETS, help="comma-separated book-recipe models (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="epochs of every run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="rounds; each runs every variant once (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the seed of every run (default %(default)s)")
    p.add_argument("--book", action="store_true", help="also the book's own pipeline")
    p.add_argument("--ablate", action="store_true", help="also each speed option the policy turns on, off")
    p.add_argument("--baseline", metavar="SRC", help="also moderncnn from another checkout's src folder")
    p.add_argument("--variant", action="append", metavar="NAME=ARGS",
                   help="also moderncnn with these extra arguments, e.g. fp32='--no-amp' (repeatable)")
    p.add_argument("--fp32", action="store_true",
                   help="every moderncnn run in fp32 (--no-amp): on a CPU with bf16 in hardware, a stand-in for one "
                        "without")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="the book's DataLoader workers (d2l: 4; default %(default)s)")
    p.add_argument("--subset", type=int, metavar="N",
                   help="train on N training images only (the book: the first N; moderncnn: a class-balanced sample)")
    p.add_argument("--test-subset", type=int, metavar="N", help="moderncnn: test on N images only")
    p.add_argument("--resize", type=int, metavar="PIXELS", help="moderncnn: another image size than the recipe's")
    add_result_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    args.models = model_names(args.models)
    if not Path(args.data_dir).is_dir():
        p.error(f"no folder {args.data_dir}: pass --data-dir DIR, a folder with Fashion-MNIST's .gz files")
    if args.baseline and not (Path(args.baseline) / "moderncnn").is_dir():
        p.error(f"--baseline {args.baseline} holds no moderncnn package: give a checkout's src folder")
    device = select_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="moderncnn-whole-"))
    try:
        root = torchvision_root(Path(args.data_dir), work) if args.book else None
        results = [run_model(name, args, device, work, root) for name in args.models]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write({"epochs": args.epochs, "repeats": args.repeats, "seed": args.seed, "subset": args.subset,
           "test_subset": args.test_subset, "results": results}, "whole-runs", device, args.machine, args.json)


def run_model(name: str, args: argparse.Namespace, device: torch.device, work: Path, root: Path | None) -> dict:
    kinds = variants(name, args, device)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    order = list(kinds)
    for r in range(args.repeats):
        for variant in order[r % len(order):] + order[:r % len(order)]:
            cmd, env = command(name, kinds[variant], args, work / "run", root)
            runs[variant].append(run_once(cmd, env, work / "run", variant))
    base = statistics.median(run["seconds"] for run in runs["moderncnn"])
    print(f"\n{name}: {args.epochs} epochs, {args.repeats} rounds, {device}\n"
          f"| variant | seconds (median, min-max) | moderncnn's speed-up over it | test acc |\n|---|---|---|---|")
    for variant, rs in runs.items():
        s = spread([r["seconds"] for r in rs])
        print(f"| {variant} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | {s['median'] / base:.2f}x | "
              + ", ".join(f"{r['test_acc']:.3f}" for r in rs) + " |", flush=True)
    return {"model": name, "fp32": args.fp32, "variants": {k: " ".join(v) for k, v in kinds.items()},
            "seconds": {k: spread([r["seconds"] for r in rs]) for k, rs in runs.items()}, "runs": runs}


if __name__ == "__main__":
    import _cli

    _cli.run(main)
