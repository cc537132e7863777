"""Time to accuracy: the whole ``moderncnn train`` command, timed from outside, over several seeds.

    python benchmarks/time_to_accuracy.py MODEL [--recipe fast] [--time-budget SECONDS] [--seeds 5]
        [--data-dir DIR] [--train-args="--model-arg widths=[64,128,256]"] [--machine NAME] [--json FILE]

Each seed is one command of its own, ``python -m moderncnn train MODEL --recipe R --seed S ...``, timed from
before the process starts to after it exits: start-up, reading the data, every training step, every test pass
and checkpoint are in the figure. Its accuracy is the final test accuracy its run.json records (on the full
test set unless ``--train-args`` asks for a ``--test-subset``: the results say which). Prints the median
time, the accuracy's mean / min / max and the share of seeds reaching each target, and writes JSON with
the CPU model, the versions, the commit and every command (``docs/results/<machine>/time-to-accuracy-<date>
.json`` unless ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moderncnn.evaluate import select_device
from moderncnn.recipes import RECIPES, get_recipe
from _cli import add_result_options, model_names
from _results import spread, write

TARGETS = (0.90, 0.92, 0.93, 0.94, 0.95)


def lscpu_model() -> str | None:
    """The CPU's model name as ``lscpu`` prints it (None where there is no lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)


def command(args: argparse.Namespace, seed: int, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "moderncnn", "train", args.model, "--recipe", args.recipe, "--seed", str(seed),
           "--no-download", "--quiet", "--out", str(run_dir), "--overwrite", "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.time_budget is not None:
        cmd += ["--time-budget", f"{args.time_budget:g}"]
    return cmd + shlex.split(args.train_args or "")


def run_once(cmd: list[str], run_dir: Path) -> dict:
    """One whole command, timed from outside; what its run.json says it reached."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"{shlex.join(cmd)} failed ({last})")
    meta = json.loads((run_dir / "run.json").read_text())
    data = meta["data"]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"command": shlex.join(cmd), "seconds": seconds, "test_acc": meta["final"]["test_acc"],
            "test_images": data.get("test_used", data["test_size"]), "full_test_set":
                data.get("test_used", data["test_size"]) == data["test_size"] and not data.get("is_sample"),
            "epochs": meta["recipe"]["epochs"], "time_budget": meta.get("time_budget"),
            "train_seconds": sum(h["train_seconds"] for h in history),
            "test_acc_history": [h["test_acc"] for h in history]}


def summarise(runs: list[dict], budget: float | None) -> dict:
    """Median time, accuracy mean / min / max, and the share of seeds reaching each target."""
    accs = [r["test_acc"] for r in runs]
    return {"seconds": spread([r["seconds"] for r in runs]),
            "test_acc": {"mean": statistics.fmean(accs), "min": min(accs), "max": max(accs), "values": accs},
            "reached": {f"{t:.2f}": sum(a >= t for a in accs) / len(accs) for t in TARGETS},
            "within_budget": None if budget is None else sum(r["seconds"] <= budget for r in runs) / len(runs),
            "full_test_set": all(r["full_test_set"] for r in runs)}


def table(args: argparse.Namespace, summary: dict, cpu: str | None) -> str:
    s, a = summary["seconds"], summary["test_acc"]
    reached = " | ".join(f"{v:.0%}" for v in summary["reached"].values())
    budget = f"{args.time_budget:g} s" if args.time_budget is not None else "-"
    return (f"\n{args.model}, recipe {args.recipe}, {len(args.seeds)} seeds, {cpu or args.device}\n"
            f"| model | recipe | budget | seconds (median, min-max) | test acc (mean, min-max) | "
            + " | ".join(f">= {t:.2f}" for t in TARGETS) + " |\n|" + "---|" * (5 + len(TARGETS)) + "\n"
            f"| {args.model} | {args.recipe} | {budget} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) | "
            f"{a['mean']:.4f} ({a['min']:.4f}-{a['max']:.4f}) | {reached} |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Time to accuracy: the whole 'moderncnn train' command, timed from outside the process, over "
                    "several seeds; the median time, the test accuracy's mean/min/max and the share of seeds "
                    "reaching 0.90/0.92/0.93/0.94/0.95, as a table and as JSON.")
    p.add_argument("model", help="a name from 'moderncnn list', e.g. fastnet or lenet_bn")
    p.add_argument("--recipe", choices=RECIPES, default="fast", help="the training recipe (default: %(default)s)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="passed to moderncnn train: the epochs are fitted to it; the share of seeds within it is "
                        "reported")
    p.add_argument("--seeds", type=int, default=5, help="how many seeds, 0 to N-1 (default %(default)s; the recorded "
                   "figures need at least 5)")
    p.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST's .gz files (default: the train command's own "
                   "search; the figures need the full data set)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--train-args", metavar="ARGS",
                   help="more arguments for moderncnn train, quoted after an equals sign, e.g. "
                        "--train-args=\"--model-arg widths=[64,128,256]\"")
    add_result_options(p)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    model_names(args.model)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    if args.time_budget is not None and not 0 < args.time_budget < float("inf"):
        p.error("--time-budget must be a number of seconds > 0")
    if args.data_dir and not Path(args.data_dir).is_dir():
        p.error(f"no folder {args.data_dir}: pass --data-dir DIR, a folder with Fashion-MNIST's .gz files")
    get_recipe(args.model, args.recipe)  # a model without this recipe fails before any run
    args.seeds = list(range(args.seeds))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = select_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="moderncnn-tta-"))
    runs = []
    try:
        for seed in args.seeds:
            runs.append({"seed": seed, **run_once(command(args, seed, work / "run"), work / "run")})
            print(f"seed {seed}: {runs[-1]['seconds']:.1f} s, test acc {runs[-1]['test_acc']:.4f} "
                  f"({runs[-1]['epochs']} epochs)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs, args.time_budget)
    cpu = lscpu_model()
    print(table(args, summary, cpu if device.type == "cpu" else None))
    write({"model": args.model, "recipe": args.recipe, "time_budget": args.time_budget, "train_args": args.train_args,
           "lscpu_model": cpu, "targets": list(TARGETS), "summary": summary, "runs": runs},
          "time-to-accuracy", device, args.machine, args.json)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
