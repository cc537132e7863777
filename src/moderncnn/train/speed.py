"""The speed policy: every speed option decided once, here, for a device, a model, an image size and a number
of processes; the user's overrides honoured; the choice and the reason for it recorded in run.json.

A speed option changes how a step computes, never what (up to rounding). An option is on by default only
where it made whole book runs at least 1.1x faster on that kind of machine, measured alternating runs of the
same command with it on and off (``benchmarks/whole_runs.py --ablate``; the figures are in
docs/benchmarks.md). The kinds of machine differ enough to decide apart:

- ``cuda``: a GPU (measured on an H100);
- ``cpu-bf16``: a CPU with bf16 arithmetic in hardware (AMX or AVX-512 BF16: recent Xeons, AMD Zen 4 and later);
- ``cpu``: a CPU without it (most laptops; AMD before Zen 4), where bf16 is emulated and many times slower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..layers import (BatchNorm, ModuleSwaps, foldable_pairs, patch_poolable, use_folded_bn, use_patch_pool,
                      use_row_stacked)

__all__ = ["SpeedPlan", "plan_speed", "eval_speed", "keeps_freed_memory", "device_kind", "cpu_has_native_bf16",
           "SPEED_OPTIONS",
           "COMPILE_MODES", "compile_mode_of", "compiled"]

#: What the user may set: ``fit(speed={"patch_pool": False})``, ``moderncnn train --speed patch_pool=off``.
SPEED_OPTIONS = ("amp", "channels_last", "row_stacked", "fold_bn", "patch_pool", "cuda_graph")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torch.compile modes that capture CUDA graphs themselves: the whole step cannot also be one
_GRAPHING_MODES = ("reduce-overhead", "max-autotune")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AMX or AVX-512 BF16), so that bf16 autocast pays.

    Elsewhere oneDNN emulates bf16, far slower than fp32: on a 2-core AMD EPYC with AVX2 only, LeNet's book
    train step took 111 ms under bf16 autocast and 14 ms in fp32. CPUs this cannot tell about (not x86)
    count as not having it.
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so looked up with a fallback
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def device_kind(device: torch.device) -> str:
    """``"cuda"``, ``"cpu-bf16"`` (bf16 in hardware), ``"cpu"`` or the device's type (``"mps"``)."""
    if device.type == "cpu":
        return "cpu-bf16" if cpu_has_native_bf16() else "cpu"
    return device.type


@dataclass(frozen=True)
class SpeedPlan:
    """How a run computes: what :func:`plan_speed` decided, and why (``why[option]``, one line each)."""

    device_kind: str
    amp: torch.dtype | None = None
    channels_last: bool = False
    row_stacked: bool = False
    fold_bn: bool = False
    patch_pool: bool = False
    cuda_graph: bool = False
    compile: str | None = None
    why: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """For run.json: every option's value, and why."""
        d = dataclasses.asdict(self)
        d["amp"] = str(self.amp).removeprefix("torch.") if self.amp is not None else None
        return d

    @property
    def precision(self) -> str:
        """``"bfloat16 autocast"`` or ``"fp32"``, with the reason where fp32 was the policy's choice."""
        if self.amp is not None:
            return f"{str(self.amp).removeprefix('torch.')} autocast"
        why = self.why.get("amp", "")
        return f"fp32 ({why.removeprefix('off: ')})" if why.startswith("off: ") and self.device_kind != "cuda" \
            else "fp32"

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[ModuleSwaps]:
        """The plan's speed layers in ``model`` (and cudnn's autotuner on a GPU) while the block runs; the
        model's own layers, and the caller's cudnn setting, are back afterwards, whatever happens."""
        benchmark = torch.backends.cudnn.benchmark
        with ModuleSwaps() as swaps:
            if self.row_stacked:
                use_row_stacked(model, self.channels_last, swaps)
            if self.fold_bn:  # after the rows: a folded convolution's class is made from its stacked one
                use_folded_bn(model, swaps)
            if self.patch_pool:
                use_patch_pool(model, swaps)
            if self.device_kind == "cuda":  # fixed batch shapes: cudnn picks the fastest kernels once
                torch.backends.cudnn.benchmark = True
            try:
                yield swaps
            finally:
                torch.backends.cudnn.benchmark = benchmark


def plan_speed(device: torch.device, model: nn.Module | None = None, *, image_size: int | None = None,
               processes: int = 1, compile: str | None = None, schedule: str = "constant",
               overrides: dict[str, Any] | None = None) -> SpeedPlan:
    """Every speed option for training ``model`` on ``device`` at ``image_size`` pixels in ``processes``
    processes (``compile``: the ``torch.compile`` mode, or None; ``schedule``: the recipe's lr schedule).

    ``overrides`` (keys of :data:`SPEED_OPTIONS`) set an option whatever the default; one that cannot be met
    here (``cuda_graph`` on a CPU, say) is a one-line error. ``amp`` takes True (the device's dtype: bf16,
    or fp16 on a GPU without bf16), False (fp32) or a dtype.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SPEED_OPTIONS))
    if unknown:
        raise ValueError(f"unknown speed option(s) {', '.join(unknown)}; use {', '.join(SPEED_OPTIONS)}")
    kind = device_kind(device)
    defaults = _defaults(kind, model, image_size, compile, overrides.get("fold_bn"))
    obstacle = _cuda_graph_obstacle(device, schedule, processes, compile)
    if obstacle:
        if overrides.get("cuda_graph"):
            raise ValueError(f"--cuda-graph cannot be used here: {obstacle}; leave it out")
        defaults["cuda_graph"] = (False, f"off: {obstacle}")
    chosen: dict[str, Any] = {}
    why: dict[str, str] = {}
    for option, (value, reason) in defaults.items():
        if overrides.get(option) is not None:
            value, reason = overrides[option], "asked for"
        chosen[option], why[option] = value, reason
    chosen["amp"] = _amp_dtype(chosen["amp"], device)
    return SpeedPlan(kind, compile=compile, why=why, **chosen)


def _amp_dtype(value: Any, device: torch.device) -> torch.dtype | None:
    if isinstance(value, torch.dtype) or value is None:
        return value
    if not value:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _defaults(kind: str, model: nn.Module | None, image_size: int | None, compile: str | None,
              fold: bool | None) -> dict[str, tuple[Any, str]]:
    """Each option's default on this kind of machine, and why (the figures: docs/benchmarks.md)."""
    if kind == "cuda":
        return {"amp": (True, "default on a GPU: AlexNet 1.4x, VGG 1.3x"),
                "channels_last": (True, "default on a GPU: ResNet 1.9x, DenseNet 1.7x, BN LeNet 1.8x"),
                "row_stacked": (True, "default on a GPU: AlexNet 1.21x, NiN 1.18x, VGG 1.10x"),
                "fold_bn": (False, "off on a GPU: not measured there"),
                "patch_pool": (False, "off on a GPU: not measured there"),
                "cuda_graph": (True, "default on a GPU: LeNet 130k -> 650k ex/s")}
    if kind not in ("cpu", "cpu-bf16"):
        return {option: (False, f"off on {kind}: not measured there") for option in SPEED_OPTIONS}
    bf16 = kind == "cpu-bf16"
    foldable = model is not None and bool(foldable_pairs(model, image_size))
    fold = foldable and bf16 if fold is None else fold
    # batch norm over a few channels left as it is (not folded): slow in channels_last and under bf16 (eagerly)
    narrow = model is not None and compile is None and _has_narrow_norm(model, image_size if fold else 0)
    normed = model is not None and _has_norm(model)
    poolable = model is None or any(patch_poolable(m) for m in model.modules())
    return {
        "amp": (bf16 and not narrow, "off: this CPU has no bf16 in hardware" if not bf16 else
                "off: batch norm over a few channels, unfolded, is slower in bf16" if narrow else
                "on: this CPU has bf16 in hardware (whole runs 1.2-2.7x)"),
        "channels_last": (not narrow, "off: batch norm over a few channels is slow in channels_last" if narrow
                          else "on on a CPU (whole runs 1.1-1.5x)"),
        "row_stacked": (False, "off on a CPU: no faster over a whole run"),
        "fold_bn": (fold, "off: no faster in fp32 (BN LeNet 0.98x)" if foldable and not bf16 else
                    "on: batch norm over a few channels after a grey image's convolution (BN LeNet 1.25x)"
                    if foldable else "off: no such batch norm here"),
        "patch_pool": (bf16 and poolable and not normed, "off: no 2x2 average pooling here" if not poolable else
                       "off: no faster beside batch norm" if normed else "on: LeNet's whole run 1.16x" if bf16
                       else "off: no faster in fp32"),
        "cuda_graph": (False, "off: not a GPU")}


def keeps_freed_memory(device: torch.device) -> tuple[bool, str]:
    """Whether a run's process should have glibc's malloc keep freed memory for the next step
    (:mod:`moderncnn.cpumem`), and why. Process-wide and for good, so only ``moderncnn train``, which owns its
    process, acts on it; the library never does."""
    if device.type != "cpu":
        return False, "off: not a CPU"
    # The 96- and 224-pixel runs pay (1.04-1.43x); the 28-pixel ones gain a little (0.99-1.08x), never lose.
    return True, "on on a CPU: the 96- and 224-pixel runs 1.04-1.43x faster, the 28-pixel ones no slower"


def _cuda_graph_obstacle(device: torch.device, schedule: str, processes: int, compile: str | None) -> str | None:
    return ("it needs a CUDA device" if device.type != "cuda" else
            f"it would freeze the {schedule} schedule's lr" if schedule != "constant" else
            "it is for one process, not torchrun" if processes > 1 else
            f"it clashes with --compile-mode {compile}, which replays its own CUDA graphs"
            if compile in _GRAPHING_MODES else None)


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchNorm))]


def _has_norm(model: nn.Module) -> bool:
    return bool(_norms(model))


def _has_narrow_norm(model: nn.Module, folded_at: int | None = 0) -> bool:
    """A batch norm over fewer than 16 channels (a vector's lanes), other than those :func:`use_folded_bn` folds
    at images of ``folded_at`` pixels (0: none folded)."""
    folded = {id(bn) for _, bn in foldable_pairs(model, folded_at)} if folded_at != 0 else set()
    return any(getattr(m, "num_features", 16) < 16 for m in _norms(model) if id(m) not in folded)


def eval_speed(device: torch.device, model: nn.Module, run_speed: dict[str, Any] | None = None,
               run_device: str | None = None, amp: bool | None = None) -> SpeedPlan:
    """How to evaluate a trained run: as it was tested at the end of each epoch (its precision and layout),
    so that its test accuracy comes out again, where this device is of the same kind as the run's; else
    this device's defaults. ``amp=False``: fp32."""
    plan = plan_speed(device, model, overrides={"amp": amp} if amp is not None else None)
    recorded = (run_speed or {}).get("amp", (run_speed or {}).get("amp_dtype", "missing"))
    if recorded == "missing" or str(run_device or "").split(":")[0] != device.type or amp is not None:
        return plan
    dtype = getattr(torch, recorded) if isinstance(recorded, str) else None
    if device.type == "cpu" and dtype is not None and plan.amp is None:
        dtype = None  # trained on a CPU with bf16 in hardware; emulated on this one, it would be many times slower
    return dataclasses.replace(plan, amp=dtype, channels_last=bool((run_speed or {}).get("channels_last")))


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
