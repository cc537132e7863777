r"""Training throughput of every book recipe: moderncnn against the book's own pipeline.

Both sides train the same model (the book's form, Xavier init, plain SGD at the
recipe's lr and batch size) on the full Fashion-MNIST training set, resized to
the recipe's size, on the same device, for the same number of batches after the
same warm-up. moderncnn: the data set as one uint8 tensor on the device,
batch-wise resize, and every speed option as the trainer's policy decides it for
the device and model (``moderncnn.train.speed``), no host sync in the step. On
the CPU both pipelines run with the malloc setting of ``moderncnn train``
(``moderncnn.cpumem``): it is process-wide, and the book's own process would not
have it, so the speed-up is if anything understated (``--malloc-defaults``: neither).
Reference: ``reference_pipeline.py`` (torchvision FashionMNIST + Resize +
ToTensor, DataLoader(num_workers=4), fp32, a host sync per batch). Examples/sec are end to end (data loading included).
Prints a Markdown table (the median of --repeats alternating runs) and writes the runs as JSON
(``docs/results/<machine>/throughput-<date>.json`` unless ``--json``).

    python benchmarks/bench_throughput.py --data-dir ../shared/data/fashion-mnist [--device cuda] \
        [--batches 20] [--models lenet,alexnet] [--speed OPTION=off] [--machine NAME] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

import moderncnn  # noqa: E402
from moderncnn.cli import parse_speed  # noqa: E402
from moderncnn.cpumem import glibc_malloc, keep_freed_memory  # noqa: E402
from moderncnn.data import DeviceLoader, load_dataset  # noqa: E402
from moderncnn.evaluate import select_device  # noqa: E402
from moderncnn.recipes import BOOK_RECIPES, get_recipe  # noqa: E402
from moderncnn.train import (COMPILE_MODES, build_loss, build_optimizer, compiled, init_weights,  # noqa: E402
                             make_train_step, plan_speed)
from _cli import add_data_dir, add_result_options, model_names  # noqa: E402
from _results import write  # noqa: E402
from reference_pipeline import book_init, book_loader, endless, time_book_steps, torchvision_root  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(name: str, data, device: torch.device, compile: str | None = None, speed: dict | None = None):
    """The trainer's step for the book recipe of ``name``, built as fit() builds it, and its loader.

    Returns (step, loader, model, plan): the step runs inside ``plan.applied(model)``. ``speed``: overrides of
    the speed policy, as ``fit(speed=...)`` takes them.
    """
    recipe = get_recipe(name, "book")
    torch.manual_seed(0)
    model = init_weights(moderncnn.create_model(name, **recipe.model_kwargs)).to(device)
    plan = plan_speed(device, model, image_size=recipe.resize or 28, compile=compile, overrides=speed)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        torch._dynamo.reset()  # each timing compiles afresh; many models would otherwise hit dynamo's cache limit
    net = compiled(model, compile, device)
    net.train()
    step = make_train_step(net, build_optimizer(model, recipe, device), build_loss(recipe), amp_dtype=plan.amp,
                           cuda_graph=recipe.batch_size if plan.cuda_graph else None)
    loader = DeviceLoader(data, recipe.batch_size, device=device, shuffle=True, drop_last=True,
                          resize=recipe.resize, channels_last=plan.channels_last)
    return step, loader, model, plan


def time_moderncnn(name: str, data, device: torch.device, batches: int, warmup: int, compile: str | None = None,
                   speed: dict | None = None) -> tuple[float, float, dict]:
    """(examples/sec over the timed batches, seconds the warm-up took: compilation included, the plan)."""
    begin = time.perf_counter()
    step, loader, model, plan = build_step(name, data, device, compile, speed)
    if plan.cuda_graph:  # the graph's capture is part of the warm-up, not of the timed steps
        warmup = max(warmup, step.warmup + 1)
    it = endless(loader)
    with plan.applied(model):
        for i in range(warmup + batches):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            step(*next(it))
        sync(device)
    settings = {**plan.as_dict(), "cuda_graph_failed": getattr(step, "failed", None)}
    return batches * loader.batch_size / (time.perf_counter() - start), start - begin, settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    p.add_argument("--batches", type=int, default=20, metavar="N",
                   help="timed batches per model and pipeline (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed batches before the timed ones, per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="alternating measurements per pipeline; the median is shown (default %(default)s)")
    p.add_argument("--models", default=",".join(BOOK_RECIPES),
                   help="comma-separated book-recipe models (default: every one)")
    p.add_argument("--small-factor", type=int, default=10, metavar="K",
                   help="the 28-pixel recipes (milliseconds a step) run K times --batches (default %(default)s)")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="the reference DataLoader's workers (the book: 4; default %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time moderncnn with torch.compile")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile's mode; implies --compile")
    p.add_argument("--speed", type=parse_speed, action="append", metavar="OPTION=on|off",
                   help="override the speed policy for moderncnn, as 'moderncnn train --speed' does (repeatable)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc as it is for both pipelines, as the book's own process runs (default: "
                        "both with the setting 'moderncnn train' makes on a CPU, moderncnn.cpumem)")
    p.add_argument("--skip-reference", action="store_true",
                   help="time moderncnn only, not the book's pipeline (its columns then read nan)")
    add_result_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    compile_mode = args.compile_mode or ("default" if args.compile else None)
    args.models = model_names(args.models)

    device = select_device(args.device)
    data = load_dataset("fashion-mnist", "train", root=args.data_dir, download=False, allow_sample=False)
    work = Path(tempfile.mkdtemp(prefix="moderncnn-bench-"))
    try:
        run_all(args, device, data, torchvision_root(Path(args.data_dir), work), compile_mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the reference's uncompressed copy of the data set


def run_all(args: argparse.Namespace, device: torch.device, data, root: Path, compile_mode: str | None) -> None:
    if device.type == "cpu" and glibc_malloc() and not args.malloc_defaults:
        keep_freed_memory()  # before either pipeline's first run, so that all of them have it alike
    print(f"# medians of {args.repeats} alternating runs; {device}, {torch.get_num_threads()} threads; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, moderncnn {moderncnn.__version__}; {args.batches} timed batches ({args.batches * args.small_factor} for 28-pixel recipes) after "
          f"{args.warmup} warm-up", flush=True)
    header = "| recipe | batch | resize | book pipeline ex/s (book's timer) | moderncnn ex/s | speed-up |"
    if compile_mode:
        header += f" moderncnn + compile ({compile_mode}) ex/s | speed-up | warm-up s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|", flush=True)
    results = []
    opts = {"speed": dict(args.speed or [])}
    for name in args.models:
        recipe = get_recipe(name, "book")
        batches = args.batches * (args.small_factor if recipe.resize is None else 1)
        runs: dict[str, list[float]] = {"reference": [], "reference_book_timer": [], "moderncnn": [], "moderncnn_compile": [],
                                       "compile_seconds": []}
        for _ in range(args.repeats):  # alternate the two pipelines: this machine's speed drifts by up to 2x
            if not args.skip_reference:
                torch.manual_seed(0)
                ref_model = moderncnn.create_model(name, **recipe.model_kwargs)
                book_init(ref_model)
                loader = book_loader(root, recipe.batch_size, recipe.resize, num_workers=args.workers)
                ref, ref_book = time_book_steps(ref_model, loader, recipe.lr, device, batches, args.warmup)
                runs["reference"].append(ref)
                runs["reference_book_timer"].append(ref_book)
                del loader, ref_model
            runs["moderncnn"].append(time_moderncnn(name, data, device, batches, args.warmup, **opts)[0])
            if compile_mode:
                rate, warm, _ = time_moderncnn(name, data, device, batches, args.warmup, compile=compile_mode, **opts)
                runs["moderncnn_compile"].append(rate)
                runs["compile_seconds"].append(warm)
        med = {k: statistics.median(v) for k, v in runs.items() if v}
        ref, ours = med.get("reference", float("nan")), med["moderncnn"]
        results.append({"recipe": name, "batch": recipe.batch_size, "resize": recipe.resize, "batches": batches,
                        **{f"{k}_median": v for k, v in med.items()}, "runs": runs})
        line = (f"| {name} | {recipe.batch_size} | {recipe.resize or 28} | {ref:,.0f} "
                f"({med.get('reference_book_timer', float('nan')):,.0f}) | {ours:,.0f} | {ours / ref:.1f}x |")
        if compile_mode:
            comp = med["moderncnn_compile"]
            line += f" {comp:,.0f} | {comp / ref:.1f}x | {max(runs['compile_seconds']):.0f} |"
        print(line, flush=True)
    write({"batches": args.batches, "warmup": args.warmup, "repeats": args.repeats, "speed": opts["speed"],
           "malloc_defaults": args.malloc_defaults, "compile_mode": compile_mode, "results": results},
          "throughput", device, args.machine, args.json)


if __name__ == "__main__":
    import _cli

    _cli.run(main)
