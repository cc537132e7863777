"""Look inside a model: a layer table with parameters and multiply-adds, and the book's shape walk.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts: 2 x the
multiply-accumulates (MACs) of convolutions, linear layers and matrix products.
Pooling, batch norm, activations, additions and concatenations count as zero,
so "FLOPs" here means 2 x MACs and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["summary", "shape_walk", "ModelSummary", "LayerRow", "SummaryTotals"]


@dataclass
class LayerRow:
    """One row of the layer table.

    ``params`` and ``macs`` belong to this row alone: a module whose children have
    rows of their own counts only its direct parameters and the MACs of its own
    code, a module at the depth limit counts its whole subtree, so each column
    sums to the model's total.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple | None  # of the first call; None if the module never ran
    params: int
    macs: int
    calls: int


@dataclass
class SummaryTotals:
    params: int
    trainable_params: int
    macs: int
    flops: int  # = 2 x macs: conv/linear/matmul only, as torch.utils.flop_counter counts them
    input_size: tuple[int, ...]
    output_shape: tuple | None
    activation_bytes: int  # outputs of every call of every leaf module
    param_bytes: int


@dataclass
class ModelSummary:
    model_name: str
    rows: list[LayerRow] = field(default_factory=list)
    totals: SummaryTotals | None = None

    def as_rows(self) -> list[dict]:
        """The layer table as a list of dicts (``pandas.DataFrame(s.as_rows())``)."""
        return [dataclasses.asdict(r) for r in self.rows]

    def to_dict(self) -> dict:
        return {"model": self.model_name, "rows": self.as_rows(), "totals": dataclasses.asdict(self.totals)}

    def __str__(self) -> str:
        header = ("Layer", "Type", "Output shape", "Params", "MACs")
        body = [
            (r.name or "(model)", r.type + (f" x{r.calls}" if r.calls > 1 else ""), _shape_str(r.output_shape),
             f"{r.params:,}", f"{r.macs:,}")
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        align = ("<", "<", "<", ">", ">")

        def fmt(line) -> str:
            return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths)).rstrip()

        rule = "-" * len(fmt(header))
        t = self.totals
        totals = [
            ("Total params", f"{t.params:,}"),
            ("Trainable params", f"{t.trainable_params:,}"),
            ("Non-trainable params", f"{t.params - t.trainable_params:,}"),
            ("MACs", f"{_human(t.macs)} ({t.macs:,})"),
            ("FLOPs", f"{_human(t.flops)} (2 x MACs of conv/linear/matmul; pooling, norms, activations not counted)"),
            ("Input size", str(tuple(t.input_size))),
            ("Output shape", _shape_str(t.output_shape)),
            ("Activation memory", f"{_human(t.activation_bytes, 'B')} (outputs of leaf layers)"),
            ("Parameter memory", _human(t.param_bytes, "B")),
        ]
        key_w = max(len(k) for k, _ in totals)
        lines = [self.model_name, rule, fmt(header), rule, *map(fmt, body), rule]
        lines += [f"{k:<{key_w}}  {v}" for k, v in totals]
        return "\n".join(lines)


def _human(n: float, unit: str = "") -> str:
    """1_234_567 -> '1.23 M'; with unit 'B', bytes in decimal units ('1.23 MB')."""
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip() if unit else f"{n:g}"


def _shape_str(shape) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_shape_str(s) for s in shape)
    return "[" + ", ".join(map(str, shape)) + "]"


def _batch_shape(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ValueError(f"input_size must be (C, H, W) or (N, C, H, W) positive integers, got {input_size!r}")
    return size


def _example_input(model: nn.Module, input_size: Sequence[int], device) -> torch.Tensor:
    """A random batch for ``model``, already checked by the model's own ``check_input``."""
    size = _batch_shape(input_size)
    params = list(model.parameters())
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    if params and params[0].device != torch.device(device):
        raise ValueError(f"the model is on {params[0].device} but device={device!r}: move it with model.to({device!r})"
                         f" or pass device={str(params[0].device)!r}")
    x = torch.rand(size, dtype=dtype, device=device)
    if hasattr(model, "check_input"):
        model.check_input(x)
    return x


def _output_shape(output):
    tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
    if not tensors:
        return None
    shapes = tuple(tuple(t.shape) for t in tensors)
    return shapes[0] if len(shapes) == 1 else shapes


def _run_eval(model: nn.Module, fn):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        model.train(was_training)


def summary(model: nn.Module, input_size: Sequence[int], depth: int | None = None,
            device: str | torch.device = "cpu") -> ModelSummary:
    """Layer table and totals from one forward pass in eval mode (no gradients).

    ``input_size`` is (C, H, W) (batch 1) or (N, C, H, W). ``depth`` limits the
    rows to modules at most that deep (1 = the top-level children, None = down to
    the leaves). A module that never runs (e.g. an auxiliary head in eval mode)
    keeps its row and parameters, with no output shape and no MACs.
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be at least 1 (1 = top-level blocks), got {depth}")
    x = _example_input(model, input_size, device)

    # Self FLOPs per module, measured as the counter's running total around each call,
    # minus what the module's children counted: exact for shared and nested modules and
    # independent of the module names FlopCounterMode uses (they vary across torch versions).
    self_flops: dict[nn.Module, int] = {}
    calls: dict[nn.Module, int] = {}
    first_shape: dict[nn.Module, tuple | None] = {}
    act_bytes = 0
    stack: list[list[int]] = []  # per active call: [counter total at entry, FLOPs of child calls]
    counter = FlopCounterMode(display=False)
    modules = dict(model.named_modules())
    leaves = {m for m in modules.values() if next(m.children(), None) is None}

    def pre_hook(module, args):
        stack.append([counter.get_total_flops(), 0])

    def post_hook(module, args, output):
        nonlocal act_bytes
        start, children = stack.pop()
        inclusive = counter.get_total_flops() - start
        self_flops[module] = self_flops.get(module, 0) + inclusive - children
        if stack:
            stack[-1][1] += inclusive
        calls[module] = calls.get(module, 0) + 1
        first_shape.setdefault(module, _output_shape(output))
        if module in leaves:
            act_bytes += sum(t.numel() * t.element_size() for t in tree_flatten(output)[0]
                             if isinstance(t, torch.Tensor))

    handles = []
    try:
        for m in modules.values():
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))

        def forward():
            with counter:
                return model(x)

        output = _run_eval(model, forward)
    finally:
        for h in handles:
            h.remove()

    def row_of(name: str) -> str:
        return name if depth is None else ".".join(name.split(".")[:depth])

    def new_row(n: str, m: nn.Module) -> LayerRow:
        return LayerRow(n, type(m).__name__, n.count(".") + 1 if n else 0, first_shape.get(m), 0, 0, calls.get(m, 0))

    rows = {n: new_row(n, m) for n, m in modules.items() if n and (depth is None or n.count(".") < depth)}
    for n, m in modules.items():
        params, macs = sum(p.numel() for p in m.parameters(recurse=False)), self_flops.get(m, 0) // 2
        if not n and not (params or macs):
            continue  # the root gets a row only for parameters or computation of its own
        row = rows.setdefault(row_of(n), new_row(row_of(n), m))
        row.params += params
        row.macs += macs

    params = list(model.parameters())
    flops = counter.get_total_flops()
    totals = SummaryTotals(
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        macs=flops // 2,
        flops=flops,
        input_size=tuple(x.shape),
        output_shape=_output_shape(output),
        activation_bytes=act_bytes,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
    )
    name = getattr(model, "model_name", type(model).__name__)
    return ModelSummary(name, list(rows.values()), totals)


def shape_walk(model: nn.Module, input_size: Sequence[int]) -> list[str]:
    """The book's walk: feed ``torch.rand(1, *input_size)`` through each top-level block in turn.

    One line per block, as the book prints them, e.g.
    ``'Conv2d output shape:\\t torch.Size([1, 96, 54, 54])'``.
    """
    param = next(model.parameters(), None)
    x = _example_input(model, input_size, device=param.device if param is not None else "cpu")
    stages = model.stages() if hasattr(model, "stages") else list(model.named_children())

    def walk() -> list[str]:
        nonlocal x
        lines = []
        for _, layer in stages:
            x = layer(x)
            lines.append(f"{type(layer).__name__} output shape:\t {x.shape}")
        return lines

    return _run_eval(model, walk)
