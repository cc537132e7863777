"""Whole book experiments, end to end: the book's own train_ch6 against moderncnn's trainer, wall clock.

    python benchmarks/whole_runs.py [--models lenet,lenet_bn,lenet_bn_scratch] [--epochs 10] [--repeats 2]
                                    [--compile] [--json FILE]

The throughput benchmark (bench_throughput.py) times training batches; this times what a reader waits for:
a whole 10-epoch experiment, from the data files to the last test accuracy, in one process. For each model,
alternating (this machine's speed drifts by up to 2x from one minute to the next):

- **book**: d2l's ``load_data_fashion_mnist`` + ``train_ch6`` (reference_pipeline.py): per-image
  ``ToTensor`` (and ``Resize``), ``DataLoader(num_workers=4)`` started afresh every epoch, an fp32 step with
  a host sync per batch, a test pass every epoch; without the book's animator, which would only slow it;
- **moderncnn**: ``moderncnn.fit(model, "book", data_dir=...)`` with its defaults for the device (no run
  directory, so no checkpoint writes); with ``--compile`` also ``fit(..., compile=True)``, shown as its first
  run (compilation included, unless the inductor cache already holds the graphs) and the median of the later
  ones (the cache warm).

Both start from the same seed and the book's Xavier init; their test accuracies differ as two runs of SGD in
different precisions and orders do. On the CPU both run with the trainer's malloc setting (``moderncnn.cpumem``):
it is process-wide, and the book's own process would not have it, so the speed-up is if anything understated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import moderncnn
from moderncnn.cpumem import keep_freed_memory
from moderncnn.evaluate import select_device
from moderncnn.recipes import get_recipe
from moderncnn.train import default_speed
from _cli import model_names
from reference_pipeline import book_loader, torchvision_root, train_ch6

LENETS = "lenet,lenet_bn,lenet_bn_scratch"


def book_run(name: str, root: Path, device: torch.device, epochs: int, seed: int, workers: int,
             subset: int | None = None) -> dict:
    recipe = get_recipe(name, "book")
    torch.manual_seed(seed)
    start = time.perf_counter()
    train_iter = book_loader(root, recipe.batch_size, recipe.resize, workers, persistent=False, subset=subset)
    test_iter = book_loader(root, recipe.batch_size, recipe.resize, workers, persistent=False, train=False)
    model = moderncnn.create_model(name, **recipe.model_kwargs)
    result = train_ch6(model, train_iter, test_iter, epochs, recipe.lr, device)
    result["seconds"] = time.perf_counter() - start  # the data sets' loading too, as fit's figure has it
    return result


def moderncnn_run(name: str, data_dir: str, device: torch.device, epochs: int, seed: int, compile: bool,
                  subset: int | None = None) -> dict:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the book's closing lines: the table has them
        result = moderncnn.fit(name, "book", device=device, seed=seed, data_dir=data_dir, download=False,
                               quiet=True, compile=compile, epochs=epochs, subset=subset)
    final = result.final
    return {"loss": final["loss"], "train_acc": final["train_acc"], "test_acc": final["test_acc"],
            "examples_per_sec": final["examples_per_sec"], "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--device", default=None)
    p.add_argument("--models", default=LENETS, help="comma-separated book-recipe models")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per pipeline; medians are shown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4, help="the book's DataLoader workers (d2l: 4)")
    p.add_argument("--compile", action="store_true", help="also moderncnn with torch.compile")
    p.add_argument("--subset", type=int, default=None,
                   help="train on N images only, for a quick check (the book: the first N; moderncnn: a "
                        "class-balanced N)")
    p.add_argument("--json", default=None, help="also write every run's figures here")
    args = p.parse_args(argv)
    args.models = model_names(args.models)
    if not Path(args.data_dir).is_dir():
        p.error(f"no folder {args.data_dir}: pass --data-dir DIR, a folder with Fashion-MNIST's .gz files")
    device = select_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="moderncnn-whole-"))
    try:
        results = run_all(args, device, torchvision_root(Path(args.data_dir), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the book's uncompressed copy of the data set
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                               "torch": torch.__version__, "epochs": args.epochs,
                                               "subset": args.subset,
                                               "results": results}, indent=1))


def run_all(args: argparse.Namespace, device: torch.device, root: Path) -> list[dict]:
    if default_speed(device)["keep_memory"]:
        keep_freed_memory()  # fit() sets it at its first run: here before the book's, so that all runs have it alike
    print(f"# {args.epochs} epochs, seed {args.seed}, {device}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; medians of {args.repeats} alternating runs: wall seconds (test accuracy)", flush=True)
    pipelines = ["book", "moderncnn"] + (["moderncnn_compile"] if args.compile else [])
    header = "| model | book | moderncnn | speed-up |" + (" moderncnn --compile | speed-up, first / later |"
                                                          if args.compile else "")
    print(header)
    print("|---" * (header.count("|") - 1) + "|", flush=True)
    results = []
    for name in args.models:
        runs: dict[str, list[dict]] = {k: [] for k in pipelines}
        for _ in range(args.repeats):
            runs["book"].append(book_run(name, root, device, args.epochs, args.seed, args.workers, args.subset))
            for key in pipelines[1:]:
                runs[key].append(moderncnn_run(name, args.data_dir, device, args.epochs, args.seed,
                                               key == "moderncnn_compile", args.subset))
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        results.append({"model": name, "median_seconds": med, "runs": runs})
        cells = [f"{med[k]:.1f} s ({statistics.median(r['test_acc'] for r in runs[k]):.3f})" for k in pipelines[:2]]
        line = f"| {name} | {cells[0]} | {cells[1]} | {med['book'] / med['moderncnn']:.1f}x |"
        if args.compile:
            first, *later = runs["moderncnn_compile"]
            warm = statistics.median(r["seconds"] for r in later) if later else first["seconds"]
            line += (f" {first['seconds']:.1f} s first, {warm:.1f} s later ({first['test_acc']:.3f}) |"
                     f" {med['book'] / first['seconds']:.1f}x / {med['book'] / warm:.1f}x |")
        print(line, flush=True)
    return results


if __name__ == "__main__":
    import _cli

    _cli.run(main)
