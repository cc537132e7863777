"""Training throughput of every book recipe: moderncnn against the book's own pipeline.

Both sides train the same model (the book's form, Xavier init, plain SGD at the
recipe's lr and batch size) on the full Fashion-MNIST training set, resized to
the recipe's size, on the same device, for the same number of batches after the
same warm-up. moderncnn: the data set as one uint8 tensor on the device,
batch-wise resize, bf16 autocast (where the device has bf16 in hardware),
channels_last and (CUDA) the step as one CUDA graph as the trainer picks them
for the device, no host sync in the step. On the CPU both pipelines run with the
trainer's malloc setting (``moderncnn.cpumem``): it is process-wide, and the
book's own process would not have it, so the speed-up is if anything understated.
Reference: ``reference_pipeline.py`` (torchvision FashionMNIST + Resize +
ToTensor, DataLoader(num_workers=4), fp32, a host sync per batch). Examples/sec are end to end (data loading included).

    python benchmarks/bench_throughput.py --data-dir ../shared/data/fashion-mnist [--device cuda] \
        [--batches 20] [--models lenet,alexnet] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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
from moderncnn.cpumem import keep_freed_memory  # noqa: E402
from moderncnn.data import DeviceLoader, load_dataset  # noqa: E402
from moderncnn.distributed import World  # noqa: E402
from moderncnn.layers import use_folded_bn, use_patch_pool, use_row_stacked  # noqa: E402
from moderncnn.recipes import BOOK_RECIPES, get_recipe  # noqa: E402
from moderncnn.evaluate import cpu_has_native_bf16  # noqa: E402
from moderncnn.train import (COMPILE_MODES, _device_name, _use_cuda_graph, build_loss, build_optimizer,  # noqa: E402
                             compiled, default_speed, init_weights, make_train_step, select_device)
from _cli import model_names  # noqa: E402
from reference_pipeline import book_init, book_loader, endless, time_book_steps, torchvision_root  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step(name: str, data, device: torch.device, compile: str | None = None, amp: bool = True,
               channels_last: bool | None = None, cuda_graph: bool | None = None, row_stacked: bool | None = None,
               keep_memory: bool | None = None):
    """The trainer's step for the book recipe of ``name``, built as fit() builds it, and its loader.

    Returns (step, loader, settings). None for an option: the device's default, as fit() decides it.
    """
    recipe = get_recipe(name, "book")
    torch.manual_seed(0)
    model = init_weights(moderncnn.create_model(name, **recipe.model_kwargs)).to(device)
    speed = default_speed(device, model, compiled=compile is not None, image_size=recipe.resize or 28)
    if not amp:
        speed["amp_dtype"] = None
    if channels_last is not None:
        speed["channels_last"] = channels_last
    # fit() stacks rows under autocast only (measured there); an explicit request is taken as it is
    rows = speed["row_stacked"] and speed["amp_dtype"] is not None if row_stacked is None else row_stacked
    graph = _use_cuda_graph(cuda_graph, speed["cuda_graph"], device, recipe, World(), compile)  # as fit() decides
    if speed["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if rows:
        use_row_stacked(model, speed["channels_last"])
    if speed["fold_bn"]:
        use_folded_bn(model)
    if speed["patch_pool"]:
        use_patch_pool(model)
    keep = speed["keep_memory"] if keep_memory is None else keep_memory
    kept = keep and keep_freed_memory()  # as fit() does (run_all set it for both pipelines)
    if compile:
        torch._dynamo.reset()  # each timing compiles afresh; many models would otherwise hit dynamo's cache limit
    net = compiled(model, compile, device)
    net.train()
    step = make_train_step(net, build_optimizer(model, recipe, device), build_loss(recipe),
                           amp_dtype=speed["amp_dtype"], cuda_graph=recipe.batch_size if graph else None)
    loader = DeviceLoader(data, recipe.batch_size, device=device, shuffle=True, drop_last=True,
                          resize=recipe.resize, channels_last=speed["channels_last"])
    settings = {"amp": str(speed["amp_dtype"]), "channels_last": speed["channels_last"], "row_stacked": rows,
                "fold_bn": speed["fold_bn"], "patch_pool": speed["patch_pool"], "keep_memory": kept,
                "compile": compile, "cuda_graph": graph}
    return step, loader, settings


def time_moderncnn(name: str, data, device: torch.device, batches: int, warmup: int, compile: str | None = None,
                   amp: bool = True, channels_last: bool | None = None, cuda_graph: bool | None = None,
                   row_stacked: bool | None = None, keep_memory: bool | None = None) -> tuple[float, float, dict]:
    """(examples/sec over the timed batches, seconds the warm-up took: compilation included, the settings)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as fit() does; the book's loop does not
    begin = time.perf_counter()
    step, loader, settings = build_step(name, data, device, compile, amp, channels_last, cuda_graph, row_stacked,
                                        keep_memory)
    if settings["cuda_graph"]:  # the graph's capture is part of the warm-up, not of the timed steps
        warmup = max(warmup, step.warmup + 1)
    it = endless(loader)
    for i in range(warmup + batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        step(*next(it))
    sync(device)
    torch.backends.cudnn.benchmark = False
    settings["cuda_graph_failed"] = getattr(step, "failed", None)
    return batches * loader.batch_size / (time.perf_counter() - start), start - begin, settings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--device", default=None)
    p.add_argument("--batches", type=int, default=20, help="timed batches per model and pipeline")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements per pipeline; the median is shown")
    p.add_argument("--models", default=",".join(BOOK_RECIPES), help="comma-separated book-recipe models")
    p.add_argument("--small-factor", type=int, default=10,
                   help="the 28-pixel recipes (milliseconds a step) run this many times --batches")
    p.add_argument("--workers", type=int, default=4, help="the reference DataLoader's workers (the book: 4)")
    p.add_argument("--compile", action="store_true", help="also time moderncnn with torch.compile")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile's mode; implies --compile")
    p.add_argument("--no-amp", action="store_true", help="moderncnn in fp32")
    p.add_argument("--channels-last", type=int, choices=(0, 1), default=None, help="force channels_last off/on")
    p.add_argument("--cuda-graph", type=int, choices=(0, 1), default=None,
                   help="force the eager step's CUDA graph off/on (default: as fit() decides; 1 where it cannot "
                        "apply, e.g. with --compile-mode, is an error)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc as it is for both pipelines, as the book's own process runs (default: "
                        "both with the trainer's setting, moderncnn.cpumem)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
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
    if default_speed(device)["keep_memory"] and not args.malloc_defaults:
        keep_freed_memory()  # before either pipeline's first run, so that all of them have it alike
    dev_name = _device_name(device)
    if device.type == "cpu":  # what decides the trainer's precision there
        dev_name += (f" ({torch.backends.cpu.get_cpu_capability()}, bf16 in hardware: "
                     f"{'yes' if cpu_has_native_bf16() else 'no'})")
    print(f"# medians of {args.repeats} alternating runs; {dev_name}, {torch.get_num_threads()} threads; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, moderncnn {moderncnn.__version__}; {args.batches} timed batches ({args.batches * args.small_factor} for 28-pixel recipes) after "
          f"{args.warmup} warm-up", flush=True)
    header = "| recipe | batch | resize | book pipeline ex/s (book's timer) | moderncnn ex/s | speed-up |"
    if compile_mode:
        header += f" moderncnn + compile ({compile_mode}) ex/s | speed-up | warm-up s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|", flush=True)
    results = []
    opts = {"amp": not args.no_amp, "channels_last": None if args.channels_last is None else bool(args.channels_last),
            "cuda_graph": None if args.cuda_graph is None else bool(args.cuda_graph),
            "keep_memory": False if args.malloc_defaults else None}
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
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev_name, "torch": torch.__version__,
                                               "batches": args.batches, "cuda_graph": args.cuda_graph,
                                               "compile_mode": compile_mode, "results": results}, indent=1))


if __name__ == "__main__":
    import _cli

    _cli.run(main)
