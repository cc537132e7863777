"""The trainer: d2l's ``train_ch6`` as a library, with checkpoints, metrics and speed options.

``fit("lenet")`` trains the book's LeNet with the book's recipe and returns a
:class:`TrainResult`; ``fit(..., out_dir="runs/x")`` also writes a run
directory (see :mod:`moderncnn.checkpoint`) that ``resume=True`` continues.
One training step is :func:`make_train_step`, which the benchmarks time too.

Speed options change how, not what, is computed: bf16 autocast (batch norm
and the loss stay in fp32, autocast's own rule), channels_last, on a GPU the
whole step replayed as one CUDA graph (:mod:`moderncnn.cudagraph`), optional
``torch.compile``; loss and accuracy are summed on the device and read once
per epoch, so the step never waits for the host.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .checkpoint import (RunFiles, _unwrap, atomic_write, deferred_interrupt, load_pretrained, load_state,
                         load_weights, new_figure, read_run_json, save_figure, save_state, save_weights,
                         weights_epoch, write_run_json)
from .cpumem import keep_freed_memory
from .cudagraph import GraphedStep, TrainStep
from .distributed import (World, all_sum, broadcast_buffers, join, leave, local_device, main_first, on_main,
                          world_from_env)
from .evaluate import autocast, cpu_has_native_bf16, evaluate, select_device
from .layers import (BatchNorm, foldable_pairs, restore_avg_pool2d, restore_conv2d, restore_folded_bn, use_folded_bn,
                     use_patch_pool, use_row_stacked)
from .recipes import BOOK_FIGURES, BOOK_RECIPES, Recipe, get_recipe
from .registry import get_model_builder

__all__ = ["TrainResult", "fit", "init_weights", "build_optimizer", "build_scheduler", "build_loss",
           "make_train_step", "default_speed", "format_final", "plot_curves", "TrainStep"]

@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained model, one dict per epoch, the final figures and the files."""

    model: nn.Module
    recipe: Recipe
    history: list[dict[str, Any]]
    final: dict[str, Any]
    device: torch.device
    run_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_final(self.final, self.recipe)


def init_weights(model: nn.Module) -> nn.Module:
    """d2l's ``init_weights``: Xavier-uniform on the weight of every exact Linear/Conv2d; biases untouched."""
    def init(m: nn.Module) -> None:
        if type(m) in (nn.Linear, nn.Conv2d):  # the book's type(m) == ..., so subclasses keep their own init
            nn.init.xavier_uniform_(m.weight)

    return model.apply(init)


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device | None = None) -> torch.optim.SGD:
    """Plain SGD for the book; momentum/Nesterov and weight decay on conv/linear weights only for others."""
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.weight_decay:
        decay = [p for p in params if p.dim() > 1]
        rest = [p for p in params if p.dim() <= 1]
        groups: Any = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        groups = params
    fused = device is not None and device.type == "cuda"
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                           fused=fused or None, foreach=None if fused else True)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    """The recipe's per-step lr schedule, or None for the book's constant lr."""
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def build_loss(recipe: Recipe) -> nn.CrossEntropyLoss:
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, *,
                    amp_dtype: torch.dtype | None = None, scheduler: Any = None,
                    cuda_graph: int | None = None) -> TrainStep:
    """One SGD step as a function ``step(x, y) -> (loss * batch, correct)``, both 0-dim device tensors.

    Nothing in it waits for the device. ``cuda_graph=N``: batches of N examples are replayed as one CUDA graph
    (:class:`~moderncnn.cudagraph.GraphedStep`), other sizes run eagerly; no ``scheduler`` then.

    A model that returns ``(logits, *aux)`` in training mode (it has
    ``aux_loss_weight``) is trained on ``CE(logits) + aux_loss_weight * sum(CE(aux))``; accuracy and the
    reported loss come from the logits' term only.
    """
    aux_weight = float(getattr(_unwrap(model), "aux_loss_weight", 0.0) or 0.0)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, amp_dtype, cache=cuda_graph is None):
            out = model(x)
            logits, *aux = out if isinstance(out, (tuple, list)) else (out,)
            main = loss_fn(logits, y)
            loss = main + aux_weight * sum(loss_fn(a, y) for a in aux) if aux else main
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return main.detach().float() * y.shape[0], (logits.detach().argmax(1) == y).sum()

    if cuda_graph is not None:
        if scheduler is not None:
            raise ValueError("a CUDA graph would freeze the lr of a per-step schedule; train without one")
        return GraphedStep(step, cuda_graph)
    return step


def default_speed(device: torch.device, model: nn.Module | None = None, compiled: bool = False,
                  image_size: int | None = None) -> dict[str, Any]:
    """bf16 autocast and channels_last where they pay off (measured: docs/benchmarks.md), else off.

    On the CPU, bf16 only where it is done in hardware (:func:`~moderncnn.evaluate.cpu_has_native_bf16`).

    ``compiled``: the model will run under ``torch.compile``, which changes what pays off on the CPU.
    ``image_size``: the side of the images it will train on, where known (it decides where batch norm folds).
    """
    if device.type == "cuda":
        # H100, book recipes, the step as one CUDA graph (cudagraph.py; LeNet 130k -> 650k ex/s) with
        # cudnn.benchmark: bf16 makes AlexNet 1.4x and VGG 1.3x faster than fp32, ResNet and DenseNet even;
        # channels_last then makes ResNet 1.9x, DenseNet 1.7x, BN LeNet 1.8x, GoogLeNet 1.2x and the 224-pixel
        # models 1.1x faster, LeNet 8% slower. Single-channel convolutions over stacked rows replace cuDNN's
        # slow single-channel kernel: AlexNet 1.21x, NiN 1.18x, VGG 1.10x, ResNet 1.09x, DenseNet 1.07x,
        # GoogLeNet 1.03x (docs/benchmarks.md).
        return {"amp_dtype": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
                "channels_last": True, "row_stacked": True, "fold_bn": False, "patch_pool": False, "cuda_graph": True,
                "keep_memory": False}
    if device.type == "cpu":
        # 2-core Xeon with AMX-bf16, book recipes, bf16 step: channels_last makes GoogLeNet 2.0x, DenseNet
        # 1.6x and LeNet 1.4x faster, AlexNet and ResNet even, but the BN LeNets 2.3x slower: PyTorch's CPU
        # channels_last batch norm is slow over a handful of channels (6 and 16 there). Compiled, batch norm
        # is generated code and that exception goes: channels_last makes the compiled BN LeNet ~1.2x faster
        # (the from-scratch one ~5% slower). Single-channel convolutions (the stem, for grey images) over
        # stacked rows: the compiled LeNets' steps 8-17% faster, AlexNet's stem 249 -> 56 ms (bf16, profiled).
        # Average pooling's backward as a matmul (layers/patchpool.py): LeNet 1.23-1.27x compiled, 1.20-1.29x
        # eagerly, BN LeNet 1.12-1.15x eagerly, DenseNet 1.03x; compiled, it splits the pooling's backward from a
        # batch norm's, which the compiler fuses otherwise: the compiled BN LeNets 0.88-0.91x, so not there unless
        # that batch norm is folded. Batch norm over a few channels after a single-channel convolution folded into
        # it (layers/foldbn.py), with channels_last and the matmul pooling: compiled, BN LeNet's step 1.28-1.36x
        # faster, the from-scratch one's 1.36-1.38x; eagerly 0.92-1.16x and 1.56-1.60x (in NCHW no faster: the
        # batch norm over 16 channels left is no reason for it).
        # Without bf16 in hardware (AVX2-only CPUs: most laptops' and AMD's before Zen 4) the step runs in fp32,
        # with the same layout and layers: on a 2-core AMD EPYC (AVX2) they are the fastest there too. Freed
        # memory kept for the next step (cpumem.py): AlexNet's and GoogLeNet's steps 1.17-1.2x faster there.
        folds = model is not None and bool(foldable_pairs(model, image_size))
        return {"amp_dtype": torch.bfloat16 if cpu_has_native_bf16() else None,
                "channels_last": compiled or model is None or not _has_narrow_norm(model, image_size),
                "row_stacked": True, "fold_bn": True,
                "patch_pool": not (compiled and model is not None and _has_norm(model) and not folds),
                "cuda_graph": False, "keep_memory": True}
    return {"amp_dtype": None, "channels_last": False, "row_stacked": False, "fold_bn": False, "patch_pool": False,
            "cuda_graph": False, "keep_memory": False}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode_of(compile: bool | str | None) -> str | None:
    """The ``torch.compile`` mode that ``compile`` asks for (True: ``"default"``), or None for eager."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {compile!r}; use one of {', '.join(COMPILE_MODES)}")
    return compile


def compiled(model: nn.Module, mode: str | None, device: torch.device | None = None) -> nn.Module:
    """``model`` under ``torch.compile(mode=...)``, or ``model`` itself for ``mode=None``.

    On the CPU the compiler's generated C++ needs a C++ compiler: without one this fails here, in one line,
    rather than with the inductor's stack trace at the first step.
    """
    if mode is None:
        return model
    if device is not None and device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # older torch: let torch.compile report it
            pass
        else:
            try:
                get_cpp_compiler()
            except RuntimeError as e:
                raise ValueError(f"--compile on the CPU needs a C++ compiler ({e}); install g++ or clang, "
                                 f"set CXX, or train without --compile") from None
    # static shapes: fit() compiles for the full batch only (the last, smaller one runs eagerly); CUDA
    # graphs need static shapes anyway
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def _has_narrow_norm(model: nn.Module, image_size: int | None = None) -> bool:
    """A batch norm over fewer than 16 channels (a vector's lanes) that ``use_folded_bn`` leaves alone."""
    folded = {id(bn) for _, bn in foldable_pairs(model, image_size)}
    return any(getattr(m, "num_features", 16) < 16 for m in model.modules()
               if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm)) and id(m) not in folded)


def _has_norm(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm)) for m in model.modules())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in float64 chunks (no big float copy)."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
    n = images.numel() / c
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def _fit_resize(recipe: Recipe, model: nn.Module, native: int, explicit: bool) -> Recipe:
    """A resize the user did not set, moved to the model's default size when the model cannot take it."""
    if explicit:
        return recipe
    lo = getattr(model, "min_input_size", 1)
    hi = getattr(model, "max_input_size", None)
    size = recipe.resize or native
    if lo <= size <= (hi or size):
        return recipe
    fitted = getattr(model, "default_image_size", size)
    if not lo <= fitted <= (hi or fitted):
        fitted = min(max(size, lo), hi or size)
    note = f"; resized to {fitted} because {recipe.model or 'the model'} accepts {lo}..{hi or 'any'} pixels"
    return recipe.replace(resize=None if fitted == native else fitted, based_on=recipe.based_on + note)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        vision = version("torchvision")  # without importing it: ~2 s
    except PackageNotFoundError:
        vision = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
            "moderncnn": __version__}


def _git_commit() -> dict[str, Any] | None:
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        return platform.processor() or platform.machine()
    return device.type


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The book's animator as a PNG: train loss, train acc and test acc against epoch."""
    fig = new_figure((4.5, 3.2))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    for key, label, style in (("loss", "train loss", "-"), ("train_acc", "train acc", "m--"),
                              ("test_acc", "test acc", "g-.")):
        ax.plot(epochs, [h[key] for h in history], style, label=label)
    ax.set_xlabel("epoch")
    ax.set_xlim(1, max(epochs[-1], 2))
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def format_final(final: dict[str, Any], recipe: Recipe | None = None) -> str:
    """The book's two closing lines, then the book's figures for the experiment beside ours."""
    lines = [f"loss {final['loss']:.3f}, train acc {final['train_acc']:.3f}, test acc {final['test_acc']:.3f}",
             f"{final['examples_per_sec']:.1f} examples/sec on {final['device']}"]
    if recipe is None or recipe.book not in BOOK_FIGURES:
        return "\n".join(lines)
    rows = [(f"ours ({final['device']})", final["loss"], final["train_acc"], final["test_acc"],
             final["examples_per_sec"])]
    rows += [(f"book {build} (V100)", f.loss, f.train_acc, f.test_acc, f.examples_per_sec)
             for build, f in BOOK_FIGURES[recipe.book].items()]
    lines += ["", f"{'':22} {'loss':>6} {'train acc':>9} {'test acc':>8} {'examples/sec':>12}"]
    lines += [f"{n:22} {lo:6.3f} {tr:9.3f} {te:8.3f} {ex:12.1f}" for n, lo, tr, te, ex in rows]
    diff = recipe.differences(BOOK_RECIPES[recipe.book], ignore=("based_on", "book", "model_kwargs"))
    diff.update({f"model {k}": v for k, v in _dict_diff(recipe.model_kwargs, BOOK_RECIPES[recipe.book].model_kwargs)})
    if diff:
        lines.append("(our recipe differs from the book's: "
                     + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items()) + ")")
    return "\n".join(lines)


def _dict_diff(a: dict, b: dict) -> list[tuple[str, tuple]]:
    return [(k, (a.get(k), b.get(k))) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _other_gpus_hint(world: World, device: torch.device) -> str | None:
    """One process on one of several GPUs: say how to use them all."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if world.distributed or gpus < 2:
        return None
    return (f"({gpus} GPUs are visible and this run uses {device}: torchrun --nproc-per-node {gpus} -m moderncnn "
            f"train ... splits every batch across all of them)")


def _precision(amp_dtype: torch.dtype | None, device: torch.device, asked: bool | None) -> str:
    """How the step computes, for the run's first line: why fp32, where the CPU decided it."""
    if amp_dtype is not None:
        return f"{str(amp_dtype).replace('torch.', '')} autocast"
    if device.type == "cpu" and asked is None and not cpu_has_native_bf16():
        return "fp32 (this CPU has no bf16 in hardware)"
    return "fp32"


def _where(world: World, device: torch.device) -> str:
    return f"{world.size} x {device.type}" if world.distributed else str(device)


def _summary(history: list[dict[str, Any]], device: str) -> dict[str, Any]:
    last = history[-1]
    timed = [h for h in history if not h.get("warmup")] or history  # torch.compile's first epoch compiles
    seconds = sum(h["train_seconds"] for h in timed)
    examples = sum(h["examples"] for h in timed)
    return {"loss": last["loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"],
            "examples_per_sec": examples / seconds if seconds > 0 else math.nan, "device": device,
            "epochs": last["epoch"], "train_seconds": seconds}


# Values that may differ between a stopped run and its --resume without changing the result.
_RESUME_FREE = ("based_on",)


def _check_resumable(meta: dict[str, Any], here: dict[str, Any], files: RunFiles) -> None:
    theirs, ours = meta.get("recipe", {}), here["recipe"]
    free = _RESUME_FREE + (("epochs",) if ours.get("schedule") == "constant" else ())
    diffs = [(k, theirs.get(k), ours.get(k)) for k in sorted(set(theirs) | set(ours))
             if k not in free and theirs.get(k) != ours.get(k)]
    diffs += [(k, meta.get(k), here[k]) for k in ("model", "model_kwargs", "seed") if meta.get(k) != here[k]]
    if meta.get("data", {}).get("name") != here["data"]["name"]:
        diffs.append(("dataset", meta.get("data", {}).get("name"), here["data"]["name"]))
    if diffs:
        shown = ", ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in diffs[:4])
        raise ValueError(f"{files.dir} holds a different run ({shown}); resume it with the same options, "
                         f"or pass --overwrite, or choose another --out")


def _claim_run_dir(files: RunFiles, resume: bool, overwrite: bool) -> bool:
    """Make sure ``files.dir`` may be written; returns True when there is a run to resume."""
    if files.dir.exists() and not files.dir.is_dir():
        raise NotADirectoryError(f"--out {files.dir} is a file, not a directory; choose another --out")
    has_run = files.run_json.exists()
    checkpointed = files.has_checkpoint()
    if has_run and resume:
        if checkpointed:
            return True
        print(f"{files.dir} holds a run with no finished epoch: starting it again", file=sys.stderr)
        overwrite = True
    if has_run and not overwrite:
        meta = read_run_json(files.run_json)
        if checkpointed or meta.get("status") not in ("failed", "interrupted"):  # "running": maybe another process
            what = f"{meta.get('model')} {meta.get('recipe', {}).get('name')}, {meta.get('status')}, " \
                   f"{meta.get('epochs_done', 0)}/{meta.get('recipe', {}).get('epochs')} epochs"
            raise ValueError(f"{files.dir} already holds a run ({what}); pass --resume to continue it, "
                             f"--overwrite to replace it, or choose another --out")
        print(f"{files.dir} holds a {meta['status']} run with no finished epoch: replacing it", file=sys.stderr)
        overwrite = True
    if overwrite:
        for p in files.all():
            p.unlink(missing_ok=True)
    if resume and not has_run:
        print(f"nothing to resume in {files.dir}: starting a new run", file=sys.stderr)
    try:
        files.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the run directory {files.dir} ({e.strerror}); choose another --out") from None
    return False


def _load_data(recipe: Recipe, train_data: Any, test_data: Any, data_dir: str | Path | None, download: bool):
    from .data import load_dataset

    if (train_data is None) != (test_data is None):
        raise ValueError("give both train_data and test_data, or neither (then the recipe's dataset is loaded)")
    if train_data is None:
        train_data = load_dataset(recipe.dataset, "train", root=data_dir, download=download)
        test_data = load_dataset(recipe.dataset, "test", root=data_dir, download=download)
    if train_data.images.shape[1:] != test_data.images.shape[1:]:
        raise ValueError(f"train and test images differ in shape ({tuple(train_data.images.shape[1:])} vs "
                         f"{tuple(test_data.images.shape[1:])})")
    return train_data, test_data


def fit(model: nn.Module | str, recipe: str | Recipe = "book", out_dir: str | Path | None = None,
        device: str | torch.device | None = None, *, seed: int = 0, data_dir: str | Path | None = None,
        train_data: Any = None, test_data: Any = None, download: bool = True, amp: bool | None = None,
        channels_last: bool | None = None, compile: bool | str = False, cuda_graph: bool | None = None,
        resume: bool = False, overwrite: bool = False, quiet: bool = False, command: str | None = None,
        init_from: str | Path | None = None, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        **overrides: Any) -> TrainResult:
    """Train ``model`` (a registered name or a built model) with a recipe, like the book's ``train_ch6``.

    ``recipe``: ``"book"``, ``"modern"`` or a :class:`~moderncnn.recipes.Recipe`; ``overrides`` replace any
    recipe value (``epochs=2, lr=0.1, batch_size=64, resize=96, subset=1000, test_subset=1000, dataset="mnist",
    model_kwargs={"ratio": 8}``). Data: ``train_data``/``test_data`` (ImageDatasets), else the recipe's
    dataset from ``data_dir``/$MODERNCNN_DATA/the cache (downloaded if allowed). ``out_dir``: a run directory
    for checkpoints, metrics and curves (None: nothing written, no resume). ``amp``/``channels_last``:
    None picks the device's default (:func:`default_speed`). ``compile``: True or a ``torch.compile`` mode
    (:data:`COMPILE_MODES`). ``cuda_graph``: replay each full batch's whole step (forward, backward, update)
    as one CUDA graph, compiled or not; None: on for CUDA where it applies (one process, no lr schedule, no
    compile mode that makes its own graphs: ``"reduce-overhead"``, ``"max-autotune"``). A built model is
    re-initialised when the recipe's ``init`` is ``"xavier"``, as ``train_ch6`` does; pass
    ``init="default"`` to keep its weights. ``init_from``: start from trained weights (a run directory, a
    ``.safetensors`` or a ``.pth`` state dict, e.g. torchvision's) after the recipe's init: fine-tuning,
    with a classifier for another number of classes left at the recipe's init (see
    :func:`~moderncnn.checkpoint.load_pretrained`); ignored when resuming a run that has a checkpoint.
    ``quiet`` silences the progress bar and the per-epoch lines on stderr; the book's closing lines are
    always printed. ``on_epoch_end(epoch_dict)`` is called after each epoch's checkpoint.

    Started by torchrun on several processes, it trains with DistributedDataParallel (each step's batch split
    across them; rank 0 writes and prints): see :mod:`moderncnn.distributed`.
    """
    world = world_from_env()
    device = select_device(local_device(world, device))
    joined = join(world, device)
    try:
        return _fit(world, model, recipe, out_dir, device, seed=seed, data_dir=data_dir, train_data=train_data,
                    test_data=test_data, download=download, amp=amp, channels_last=channels_last, compile=compile,
                    cuda_graph=cuda_graph, resume=resume, overwrite=overwrite, quiet=quiet, command=command,
                    init_from=init_from, on_epoch_end=on_epoch_end, **overrides)
    finally:
        leave(joined)


def _fit(world: World, model: nn.Module | str, recipe: str | Recipe, out_dir: str | Path | None,
         device: torch.device, *, seed: int, data_dir: str | Path | None, train_data: Any, test_data: Any,
         download: bool, amp: bool | None, channels_last: bool | None, compile: bool | str,
         cuda_graph: bool | None, resume: bool, overwrite: bool, quiet: bool, command: str | None,
         init_from: str | Path | None, on_epoch_end: Callable[[dict[str, Any]], None] | None,
         **overrides: Any) -> TrainResult:
    quiet = quiet or not world.main
    if isinstance(model, str):
        get_model_builder(model)  # an unknown name fails before any data is loaded
    name = model if isinstance(model, str) else getattr(model, "model_name", type(model).__name__.lower())
    if isinstance(recipe, Recipe):
        recipe = recipe.replace(**overrides)
    else:
        recipe = get_recipe(name, recipe, **overrides)
    compile_mode = compile_mode_of(compile)
    if recipe.batch_size < world.size:
        raise ValueError(f"batch size {recipe.batch_size} is smaller than the {world.size} processes that share "
                         f"each batch; pass a larger --batch-size or start fewer processes")
    files = RunFiles(out_dir) if out_dir is not None else None
    writes = files if world.main else None  # rank 0 alone writes the run directory
    if files is not None and not (resume or overwrite):  # a run already there fails now, before data is loaded
        on_main(world, lambda: _claim_run_dir(files, resume, overwrite) if files.run_json.exists() else None)
    # rank 0 first: a download or the sample's notice happens once
    with contextlib.nullcontext() if world.main else contextlib.redirect_stderr(io.StringIO()):
        train_data, test_data = main_first(world, lambda: _load_data(recipe, train_data, test_data, data_dir,
                                                                      download))
    native = train_data.images.shape[-1]
    tested = min(recipe.test_subset or len(test_data), len(test_data))
    if tested < world.size:  # a process with no test image would have nothing to count
        raise ValueError(f"{tested} test images cannot be shared by {world.size} processes; use a larger "
                         f"--test-subset or start fewer processes")

    torch.manual_seed(seed)
    if isinstance(model, str):
        model = _create(name, recipe, len(train_data.classes), train_data.images.shape[1])
    if recipe.init == "xavier":
        init_weights(model)
    pretrained = None
    if init_from is not None and not (resume and files is not None and files.has_checkpoint()):
        pretrained = load_pretrained(model, init_from)
    recipe = _fit_resize(recipe, model, native, explicit="resize" in overrides)
    if hasattr(model, "check_input"):  # a size the model cannot take fails now, before the run directory is touched
        size = recipe.resize or native
        try:
            model.check_input(torch.empty(1, train_data.images.shape[1], size, size, device="meta"))
        except ValueError as e:
            raise ValueError(f"{e} with --resize {model.default_image_size}") from None
    normalize = _channel_stats(train_data.images) if recipe.normalize else None

    speed = default_speed(device, model, compiled=compile_mode is not None, image_size=recipe.resize or native)
    amp_dtype = speed["amp_dtype"] if amp is None or amp else None
    if amp and amp_dtype is None:
        amp_dtype = torch.bfloat16
    use_cl = speed["channels_last"] if channels_last is None else channels_last
    row_stacked = speed["row_stacked"] and amp_dtype is not None  # measured with bf16 only
    graphed = _use_cuda_graph(cuda_graph, speed["cuda_graph"], device, recipe, world, compile_mode)
    kept = speed["keep_memory"] and keep_freed_memory()  # process-wide, and for good (cpumem.py)

    meta = _run_metadata(name, recipe, seed, train_data, test_data, normalize, device, command,
                         speed={"amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                                "channels_last": use_cl, "row_stacked": row_stacked, "fold_bn": speed["fold_bn"],
                                "patch_pool": speed["patch_pool"], "keep_memory": kept,
                                "compile": compile_mode or False,
                                "cuda_graph": graphed})
    meta["init_from"] = pretrained
    meta["processes"] = world.size

    resuming = False
    if files is not None:
        resuming = on_main(world, lambda: _claim_run_dir(files, resume, overwrite))
        if resuming:
            old = read_run_json(files.run_json)
            _check_resumable(old, meta, files)
            meta["start_time"], meta["resumed_at"] = old.get("start_time"), meta["start_time"]
            meta["init_from"] = old.get("init_from")

    from .data import DeviceLoader

    norm = (normalize[0], normalize[1]) if normalize else None
    shard = (world.rank, world.size)
    train_loader = DeviceLoader(train_data, recipe.batch_size, device=device, shuffle=True, resize=recipe.resize,
                                augment=recipe.augment, normalize=norm, channels_last=use_cl,
                                subset=recipe.subset, seed=seed, shard=shard, equal_steps=True)
    test_loader = DeviceLoader(test_data, recipe.batch_size, device=device, resize=recipe.resize,
                               normalize=norm, channels_last=use_cl, subset=recipe.test_subset, shard=shard)
    meta["data"]["train_used"] = train_loader.num_examples
    meta["data"]["test_used"] = test_loader.num_examples

    model.to(device)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe, device)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    history = _restore(files, model, optimizer, scheduler, device) if resuming else []
    start = meta["epochs_done"] = len(history)
    net = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        torch.manual_seed(seed + 1_000_003 * world.rank + 7919 * start)  # dropout: other draws on each process

    loss_fn = build_loss(recipe)
    full = train_loader.share(recipe.batch_size)  # this process's examples of a full batch
    graph_size = full if graphed else None
    step = graphed_step = make_train_step(net, optimizer, loss_fn, amp_dtype=amp_dtype, scheduler=scheduler,
                                          cuda_graph=None if compile_mode else graph_size)
    if compile_mode is not None:
        # one graph, for the full batch: the epoch's last, smaller batch runs eagerly, because a second graph
        # for it costs 10-20 s of compilation on the CPU (LeNet, BN LeNet, empty cache) to save milliseconds.
        # On CUDA the compiled step is replayed as one CUDA graph too, the optimizer's update included.
        graphed_step = make_train_step(compiled(net, compile_mode, device), optimizer, loss_fn, amp_dtype=amp_dtype,
                                       scheduler=scheduler, cuda_graph=graph_size)
        step = _by_batch_size(full, graphed_step, step)
    if writes is not None:
        write_run_json(writes.run_json, meta)
    if not quiet:
        epochs = f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}"
        print(f"training {name} ({recipe.name} recipe: lr {recipe.lr}, batch {recipe.batch_size}, "
              f"resize {recipe.resize or '-'}, {epochs}) on {_where(world, device)}, "
              f"{_precision(amp_dtype, device, asked=amp)}"
              + (f", resuming after epoch {start}" if start else "")
              + (f"\nrecipe: {recipe.based_on}" if recipe.book is None else ""), file=sys.stderr)
        hint = _other_gpus_hint(world, device)
        if hint:
            print(hint, file=sys.stderr)
        if pretrained is not None:
            print(_describe_pretrained(pretrained, model), file=sys.stderr)

    from tqdm.auto import tqdm

    cudnn_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        # fixed batch shapes: pick the fastest conv kernels once; the caller's setting is back after fit
        torch.backends.cudnn.benchmark = True
    stacked = use_row_stacked(model, use_cl) if row_stacked else []  # plain nn.Conv2d again after fit
    folded = use_folded_bn(model) if speed["fold_bn"] else []  # the batch norms on their own again after fit
    pooled = use_patch_pool(model) if speed["patch_pool"] else []  # and plain nn.AvgPool2d
    try:
        for epoch in range(start, recipe.epochs):
            # the test pass (forward only, a sixth of the training images) runs eagerly: compiled, it would
            # add two more graphs' compilation to every run
            record = _train_epoch(world, model, step, train_loader, test_loader, device, amp_dtype, epoch,
                                  recipe.epochs, warmup=bool(compile_mode) and epoch == start, quiet=quiet,
                                  tqdm=tqdm, classes=list(train_data.classes))
            if scheduler is not None:
                record["lr"] = scheduler.get_last_lr()[0]
            if getattr(graphed_step, "failed", None):  # the capture failed (GraphedStep warned): it went on eagerly
                meta["speed"].update(cuda_graph=False, cuda_graph_failed=graphed_step.failed)
            history.append(record)
            meta["epochs_done"] = epoch + 1
            if writes is not None:
                with deferred_interrupt():
                    _save_epoch(writes, model, optimizer, scheduler, device, history, meta)
            if not quiet:
                tqdm.write(f"epoch {epoch + 1}/{recipe.epochs}: loss {record['loss']:.3f}, train acc "
                           f"{record['train_acc']:.3f}, test acc {record['test_acc']:.3f}, "
                           f"{record['examples_per_sec']:.1f} examples/sec, {record['wall_seconds']:.1f} s",
                           file=sys.stderr)
            if on_epoch_end is not None:
                on_epoch_end(record)
    except Exception:
        if writes is not None:  # a later command may then start it again if no epoch finished (_claim_run_dir)
            meta["status"] = "failed"
            with contextlib.suppress(OSError):  # a full disk must not hide what failed first
                write_run_json(writes.run_json, meta)
        raise
    except KeyboardInterrupt:
        if writes is not None:
            meta["status"] = "interrupted"
            write_run_json(writes.run_json, meta)
            done = meta["epochs_done"]
            where = f"the checkpoint of epoch {done} in {writes.dir} is intact" if done else "no epoch finished"
            print(f"interrupted: {where}; to continue, run the same command with --resume "
                  f"(or fit(..., resume=True))", file=sys.stderr)
        raise
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        restore_folded_bn(folded)  # first: a folded convolution's class is made from its row-stacked one
        restore_conv2d(stacked)
        restore_avg_pool2d(pooled)

    model.eval()
    final = _summary(history, _where(world, device)) if history else {}
    paths = {}
    if files is not None:
        meta["status"], meta["final"] = "finished", final
        meta["end_time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if writes is not None:
            write_run_json(writes.run_json, meta)
        paths = {"run_json": files.run_json, "weights": files.weights, "state": files.state,
                 "metrics": files.metrics, "curves": files.curves}
    result = TrainResult(model=model, recipe=recipe, history=history, final=final, device=device,
                         run_dir=files.dir if files else None, paths=paths, metadata=meta)
    if history and world.main:
        print(format_final(final, recipe))
        if train_data.is_sample:
            print(f"(trained on the embedded sample of {len(train_data):,} images, not the full set: "
                  "not comparable with the book's figures; see the notice above for the full set)")
        if meta.get("init_from") and recipe.book in BOOK_FIGURES:
            print(f"(started from the weights in {meta['init_from']['source']}, not from scratch as the book's run)")
    return result


def _run_metadata(name: str, recipe: Recipe, seed: int, train_data: Any, test_data: Any, normalize: Any,
                  device: torch.device, command: str | None, speed: dict[str, Any]) -> dict[str, Any]:
    """run.json: what was trained, how, on what data, where, with which code."""
    channels, native = int(train_data.images.shape[1]), int(train_data.images.shape[-1])
    return {
        "model": name,
        "model_kwargs": {"num_classes": len(train_data.classes), "in_channels": channels, **recipe.model_kwargs},
        "recipe": recipe.as_dict(),
        "seed": seed,
        "speed": speed,
        "input": {"channels": channels, "native_size": native, "size": recipe.resize or native,
                  "resize": recipe.resize, "normalize": normalize},
        "data": {"name": train_data.name, "source": train_data.source, "is_sample": bool(train_data.is_sample),
                 "train_size": len(train_data), "test_size": len(test_data), "classes": list(train_data.classes)},
        "device": str(device),
        "device_name": _device_name(device),
        "versions": _versions(),
        "git": _git_commit(),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in sys.argv),
        "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "epochs_done": 0,
    }


def _describe_pretrained(report: dict[str, Any], model: nn.Module) -> str:
    notes = [f"{report['loaded']} tensors"]
    if report["kept"]:
        notes.append(f"classifier for {getattr(model, 'num_classes', '?')} classes initialised afresh "
                     f"({', '.join(report['kept'])})")
    if report["adapted"]:
        notes.append(f"{', '.join(report['adapted'])} adapted to {getattr(model, 'in_channels', '?')} input "
                     f"channel(s)")
    return f"starting from {report['source']}: " + "; ".join(notes)


def _restore(files: RunFiles, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             device: torch.device) -> list[dict[str, Any]]:
    """Load the last finished epoch's weights, optimizer, scheduler and RNG; returns the history so far."""
    state = load_state(files.state)
    if weights_epoch(files.weights) != state["epoch"]:
        raise ValueError(f"{files.weights} (epoch {weights_epoch(files.weights)}) and {files.state} (epoch "
                         f"{state['epoch']}) disagree: the run was cut off while saving; pass --overwrite")
    load_weights(files.weights, model)
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], device)
    return list(state["history"])


def _create(name: str, recipe: Recipe, num_classes: int, in_channels: int) -> nn.Module:
    from .registry import create_model

    return create_model(name, num_classes=num_classes, in_channels=in_channels, **recipe.model_kwargs)


def _use_cuda_graph(requested: bool | None, default: bool, device: torch.device, recipe: Recipe, world: World,
                    compile_mode: str | None) -> bool:
    """Whether to replay the step as one CUDA graph; an explicit request that cannot be met fails here."""
    obstacle = ("it needs a CUDA device" if device.type != "cuda" else
                f"it would freeze the {recipe.schedule} schedule's lr" if recipe.schedule != "constant" else
                "it is for one process, not torchrun" if world.distributed else
                f"it clashes with --compile-mode {compile_mode}, which replays its own CUDA graphs"
                if compile_mode in _GRAPHING_MODES else None)
    if requested and obstacle:
        raise ValueError(f"--cuda-graph cannot be used here: {obstacle}; leave it out")
    return (default if requested is None else requested) and obstacle is None


# torch.compile modes that capture CUDA graphs themselves: the whole step cannot also be one
_GRAPHING_MODES = ("reduce-overhead", "max-autotune")


def _by_batch_size(size: int, full: TrainStep, other: TrainStep) -> TrainStep:
    """``full`` for batches of ``size`` examples, ``other`` for the rest."""
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (full if y.shape[0] == size else other)(x, y)

    return step


def _train_epoch(world: World, model: nn.Module, step: TrainStep, train_loader: Any, test_loader: Any,
                 device: torch.device, amp_dtype: torch.dtype | None, epoch: int, epochs: int, *, warmup: bool,
                 quiet: bool, tqdm: Any, classes: list[str]) -> dict[str, Any]:
    """One epoch: train (timed, one sync at the end), then test accuracy (not timed).

    ``warmup`` marks the first epoch of a compiled model: its time includes compilation, so the run's
    examples/sec leaves it out when there are other epochs. Under torchrun the sums and counts are over
    every process, and every process tests its share of the test set with rank 0's batch norm statistics.
    """
    train_loader.set_epoch(epoch)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(train_loader, total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
               leave=False, disable=quiet or not sys.stderr.isatty())
    t0 = time.perf_counter()
    for x, y in bar:
        batch_loss, batch_correct = step(x, y)
        loss_sum += batch_loss
        correct += batch_correct
        seen += y.shape[0]
    if world.distributed:
        loss_sum, correct, total = all_sum(world, loss_sum, correct, torch.tensor(seen, device=device))
        seen = int(total)
    _sync(device)
    train_seconds = time.perf_counter() - t0
    if seen == 0:
        raise ValueError("the training set is empty: check --subset and the data directory")
    broadcast_buffers(world, model)
    test = evaluate(model, test_loader, device, amp_dtype=amp_dtype, classes=classes)
    test_acc = test["accuracy"]
    if world.distributed:
        confusion = all_sum(world, test["confusion"].to(device))[0]
        test_acc = int(confusion.diag().sum()) / int(confusion.sum())
    return {"epoch": epoch + 1, "loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
            "test_acc": test_acc, "examples_per_sec": seen / train_seconds, "train_seconds": train_seconds,
            "examples": seen, "warmup": warmup, "wall_seconds": time.perf_counter() - t0}


def _save_epoch(files: RunFiles, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                device: torch.device, history: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Weights, then state (the commit point), then the metrics file, the curves and run.json."""
    epoch = history[-1]["epoch"]
    save_weights(files.weights, model, epoch)
    save_state(files.state, {"epoch": epoch, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict() if scheduler is not None else None,
                             "rng": _rng_state(device), "history": history})
    atomic_write(files.metrics, "".join(json.dumps(h) + "\n" for h in history).encode())
    plot_curves(history, files.curves, title=f"{meta['model']} ({meta['recipe']['name']} recipe)")
    write_run_json(files.run_json, meta)
