"""The trainer's step under several speed options, side by side, and where its device time goes.

``bench_throughput.py`` measures the defaults against the book's pipeline; this script asks which options
make the step faster on the device at hand. Each variant trains the book recipe's model on the full
Fashion-MNIST training set for the same batches after the same warm-up (compilation and the graph's
capture stay in the warm-up), fed by ``DeviceLoader``; examples/sec are end to end.

Variants (comma-separated; ``+`` combines options):
  default        what ``fit`` picks for the device (``default_speed``)
  rows           the single-channel convolutions over stacked rows (``moderncnn.layers.use_row_stacked``)
  nocl / cl      channels_last off / on
  fp32           no autocast
  nograph        no CUDA graph
  compile        ``torch.compile`` (default mode) and, on CUDA, the whole compiled step as one CUDA graph
  ro             ``torch.compile(mode="reduce-overhead")`` (its own graphs: no whole-step graph)

``--profile N``: also profile N eager steps of the default variant (graph off, so the kernels show) and print
the kernels that take the most device time.

    python benchmarks/step_variants.py --data-dir DIR --device cuda --models alexnet,nin \\
        --variants default,rows,compile --profile 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moderncnn.data import load_dataset  # noqa: E402
from moderncnn.recipes import BOOK_RECIPES  # noqa: E402
from moderncnn.train import select_device  # noqa: E402
from _cli import model_names  # noqa: E402
from bench_throughput import build_step, sync, time_moderncnn  # noqa: E402
from reference_pipeline import endless  # noqa: E402

OPTIONS = ("default", "rows", "nocl", "cl", "fp32", "nograph", "compile", "ro")


def parse_variant(text: str) -> tuple[str, ...]:
    parts = tuple(p for p in text.split("+") if p)
    unknown = [p for p in parts if p not in OPTIONS]
    if not parts or unknown:
        raise ValueError(f"unknown variant option {(unknown or [text])[0]!r} in {text!r}; use {', '.join(OPTIONS)} "
                         f"joined by '+'")
    return parts


def options(variant: tuple[str, ...]) -> dict:
    """``variant`` as bench_throughput.time_moderncnn's keyword arguments (None: the device's default)."""
    return {"compile": "reduce-overhead" if "ro" in variant else "default" if "compile" in variant else None,
            "amp": "fp32" not in variant, "channels_last": True if "cl" in variant else False if "nocl" in variant
            else None, "row_stacked": True if "rows" in variant else None,
            "cuda_graph": False if "nograph" in variant else None}


def time_variant(name: str, variant: tuple[str, ...], data, device: torch.device, batches: int,
                 warmup: int) -> dict:
    rate, warm, settings = time_moderncnn(name, data, device, batches, warmup, **options(variant))
    return {"model": name, "variant": "+".join(variant), **settings, "examples_per_sec": rate,
            "warmup_seconds": warm}


def profile(name: str, data, device: torch.device, steps: int, top: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.backends.cudnn.benchmark = device.type == "cuda"
    step, loader, _ = build_step(name, data, device, **options(("nograph",)))
    batch = loader.batch_size
    it = endless(loader)
    for _ in range(3):
        step(*next(it))
    sync(device)
    torch.backends.cudnn.benchmark = False
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step(*next(it))
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    if device.type == "cuda":  # kernels only: CPU-side ops' device time is their kernels'
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA] or events
        total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    lines = [f"## {name}: {steps} eager steps of batch {batch}, {total / steps / 1000:.2f} ms of device time a step"]
    for e in events[:top]:
        t = getattr(e, key)
        lines.append(f"{t / steps / 1000:8.3f} ms {100 * t / total:5.1f}% {e.count // steps:4d}x  {e.key[:110]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"))
    p.add_argument("--device", default=None)
    p.add_argument("--models", default=",".join(BOOK_RECIPES), help="comma-separated book-recipe models")
    p.add_argument("--variants", default="default", help="comma-separated variants, options joined by '+'")
    p.add_argument("--batches", type=int, default=30, help="timed batches per model and variant")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N eager steps of each model")
    p.add_argument("--top", type=int, default=12, help="kernels shown per profile")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    models = model_names(args.models)
    variants = [parse_variant(v) for v in args.variants.split(",") if v]
    device = select_device(args.device)
    data = load_dataset("fashion-mnist", "train", root=args.data_dir, download=False, allow_sample=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"# {name}; torch {torch.__version__}; {args.batches} timed batches after {args.warmup} warm-up", flush=True)
    results, profiles = [], []
    for model in models:
        if args.profile:
            profiles.append(profile(model, data, device, args.profile, args.top))
            print(profiles[-1], flush=True)
        for variant in variants:
            try:
                r = time_variant(model, variant, data, device, args.batches, args.warmup)
            except Exception as e:  # one variant that breaks (a compiler error, say) must not lose the others
                r = {"model": model, "variant": "+".join(variant), "error": f"{type(e).__name__}: {e}"[:300]}
            results.append(r)
            print(json.dumps(r), flush=True)
    print("\n| model | " + " | ".join("+".join(v) for v in variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for model in models:
        row = [r for r in results if r["model"] == model]
        cells = [f"{r['examples_per_sec']:,.0f}" + (" (eager: graph failed)" if r.get("cuda_graph_failed") else "")
                 if "examples_per_sec" in r else "error" for r in row]
        print(f"| {model} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "results": results,
                                               "profiles": profiles}, indent=1))


if __name__ == "__main__":
    import _cli

    _cli.run(main)
