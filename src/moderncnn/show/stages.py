"""A network's natural stages, found from the modules it runs: the blocks whose outputs a learner looks at.

A stage starts at a convolution or at a composite block (a book block, an Inception, a residual stage, a dense
block, a transition) and takes along the parameter-free or per-channel layers that follow it (activation,
normalisation, pooling, dropout), so AlexNet's ``Conv2d, ReLU, MaxPool2d`` is one stage and ResNet's
``layer1`` another. The feature part ends where the maps stop being maps: a global pooling or a flatten.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["Stage", "feature_stages", "conv_layers", "find_layer"]

Stage = tuple[str, nn.Module]


def _starts_stage(module: nn.Module) -> bool:
    """A convolution (LeNet-5's partial one too) or a block made of modules."""
    weight = getattr(module, "weight", None)
    conv = isinstance(weight, torch.Tensor) and (weight.dim() == 4 or hasattr(module, "dense_weight"))
    return conv or any(True for _ in module.children())


def _candidates(model: nn.Module) -> list[Stage]:
    """The model's top-level stages, with torchvision's ``features`` container (alexnet, vgg and densenet in the
    paper's form) opened, since it holds the whole trunk."""
    stages = model.stages() if hasattr(model, "stages") else list(model.named_children())
    head_start = getattr(model, "head_start", None)
    if head_start is not None:
        stages = stages[:head_start]
    out: list[Stage] = []
    for name, module in stages:
        if name == "features" and isinstance(module, nn.Sequential):
            out += [(f"features.{n}", m) for n, m in module.named_children()]
        else:
            out.append((name, module))
    return out


def _shapes(model: nn.Module, modules: list[Stage], x: torch.Tensor) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of each module in one forward pass (tuples for non-tensor outputs)."""
    seen: dict[str, tuple[tuple, tuple]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            shape_in = tuple(inputs[0].shape) if inputs and isinstance(inputs[0], torch.Tensor) else ()
            seen.setdefault(name, (shape_in, tuple(output.shape) if isinstance(output, torch.Tensor) else ()))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _open_flattening_blocks(model: nn.Module, modules: list[Stage], x: torch.Tensor) -> list[Stage]:
    """A block that ends in a global pooling and a flatten (the book GoogLeNet's last) is opened into its
    parts, so its Inception modules still count as stages."""
    shapes = _shapes(model, modules, x)
    out: list[Stage] = []
    for name, module in modules:
        shape_out = shapes.get(name, ((), ()))[1]
        if len(shape_out) != 4 and isinstance(module, nn.Sequential) and len(module) > 1:
            out += [(f"{name}.{n}", m) for n, m in module.named_children()]
        else:
            out.append((name, module))
    return out


def feature_stages(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``[(label, last module, output shape), ...]``: the network's stages for the input batch ``x``.

    The label names the modules a stage spans (``"0-2"``, ``"layer1"``, ``"features.3-5"``); the last module's
    output is the stage's output, what :func:`~moderncnn.show.plot_activations` draws and Grad-CAM explains.
    """
    modules = _open_flattening_blocks(model, _candidates(model), x)
    shapes = _shapes(model, modules, x)
    groups: list[list[tuple[str, nn.Module, tuple]]] = []
    for name, module in modules:
        shape_in, shape_out = shapes.get(name, ((), ()))
        if len(shape_out) != 4:
            break  # a flatten or a classifier: the head begins
        global_pool = shape_out[-2:] == (1, 1) and len(shape_in) == 4 and shape_in[-2:] != (1, 1)
        if global_pool and not _starts_stage(module):
            break
        if _starts_stage(module) or not groups:
            groups.append([])
        groups[-1].append((name, module, shape_out))
    return [(_label(g[0][0], g[-1][0]), g[-1][1], g[-1][2]) for g in groups]


def _label(first: str, last: str) -> str:
    if first == last:
        return first
    prefix, _, tail = last.rpartition(".")
    return f"{first}-{tail}" if prefix and first.startswith(prefix + ".") else f"{first}-{last}"


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the model's convolutions, in order (``--layer`` takes one of them)."""
    return [n for n, m in model.named_modules() if n and _starts_stage(m) and not any(True for _ in m.children())]


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The convolution named ``name`` (default: the first); an unknown name is a one-line error listing them."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no convolution layer")
    if name is None:
        name = convs[0]
    if name not in convs:
        model_name = getattr(model, "model_name", type(model).__name__)
        shown = ", ".join(convs[:12]) + (f", ... ({len(convs)} in all)" if len(convs) > 12 else "")
        raise ValueError(f"{model_name} has no convolution layer named {name!r}; its convolution layers: {shown}")
    return name, model.get_submodule(name)
