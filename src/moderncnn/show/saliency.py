"""Where a network looks: Grad-CAM over its last convolutional stage, and plain input gradients.

Written with two hooks rather than with captum: Grad-CAM is a weighted sum of one stage's maps by the mean of
their gradients (Selvaraju et al., 2017), short enough to read here, and the stage is the one
:func:`~moderncnn.show.stages.feature_stages` finds for every family, so no per-model layer table is needed.

Grad-CAM's mean assumes a head that averages the maps (ResNet, GoogLeNet, DenseNet). Over a head that flattens
them (LeNet, AlexNet, VGG) it can be negative everywhere, an empty picture; HiResCAM (Draelos and Carin, 2020)
multiplies gradient and map element by element instead, which is faithful to such heads and equal to
Grad-CAM over an averaging one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..figures import new_figure
from .images import class_names, display_image, normalise, read_image
from .stages import feature_stages

__all__ = ["gradcam", "input_gradients", "plot_saliency", "default_method", "METHODS"]

METHODS = ("gradcam", "hirescam", "gradients")


def default_method(model: nn.Module) -> str:
    """Grad-CAM where the head averages the last maps (a global average pool: ResNet, GoogLeNet, DenseNet,
    NiN), HiResCAM where it flattens them (LeNet, AlexNet, VGG), where Grad-CAM is often empty."""
    averages = any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and m.output_size in (1, (1, 1))
                   for m in model.modules())
    return "gradcam" if averages else "hirescam"


def _target(model: nn.Module, logits: torch.Tensor, target: int | str | None) -> int:
    """The class to explain: an index, a class name (any case; a unique start of one will do: "ankle"), or
    (None) the predicted class."""
    if target is None:
        return int(logits.argmax(1)[0])
    names = class_names(model)
    if isinstance(target, str) and not target.isdigit():
        if target in names:
            return names.index(target)
        wanted = target.casefold()
        for found in ([n for n in names if n.casefold() == wanted], [n for n in names
                                                                     if n.casefold().startswith(wanted)]):
            if len(found) == 1:
                return names.index(found[0])
        raise ValueError(f"no class named {target!r}; give a class index (0..{len(names) - 1}) or one of the "
                         f"model's classes: {', '.join(names)}")
    index = int(target)
    if not 0 <= index < logits.shape[1]:
        raise ValueError(f"class index {index} is out of range: the model has {logits.shape[1]} classes")
    return index


def gradcam(model: nn.Module, x: torch.Tensor, target: int | str | None = None, layer: str | None = None,
            elementwise: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Grad-CAM of one prepared input ``x`` (1, C, H, W): ``(heat map (H, W) in [0, 1], probabilities, class)``.

    The maps are those of the last feature stage, or of the module named ``layer``; they are weighted by the
    spatial mean of the class score's gradient (``elementwise``: by the gradient itself, HiResCAM), summed,
    kept where positive and resized to the input. All zero: no positive evidence at that stage.
    """
    model.eval()
    module = model.get_submodule(layer) if layer else feature_stages(model, x)[-1][1]
    kept: dict[str, torch.Tensor] = {}

    def keep(m: nn.Module, inp: object, out: torch.Tensor) -> None:
        out.retain_grad()
        kept["maps"] = out

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            index = _target(model, logits, target)
            logits[0, index].backward()
    finally:
        handle.remove()
    maps, grads = kept["maps"].detach()[0], kept["maps"].grad[0]
    weights = grads if elementwise else grads.mean((1, 2))[:, None, None]
    cam = F.relu((weights * maps).sum(0))
    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return cam / cam.max().clamp_min(1e-12), logits.detach().softmax(1)[0], index


def input_gradients(model: nn.Module, x: torch.Tensor,
                    target: int | str | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """|d score / d pixel| of one prepared input (the largest over colour channels), scaled to [0, 1]
    (Simonyan et al., 2014): ``(map (H, W), probabilities, class)``."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        index = _target(model, logits, target)
        logits[0, index].backward()
    g = x.grad[0].abs().amax(0)
    return g / g.max().clamp_min(1e-12), logits.detach().softmax(1)[0], index


def plot_saliency(model: nn.Module, image: str | Path | torch.Tensor, method: str | None = None,
                  target: int | str | None = None, layer: str | None = None):
    """A matplotlib Figure: the image, the saliency map (inferno: black unimportant, yellow important) and the
    map over the image, for the predicted class or ``target`` (a class name or index).

    ``method``: ``"gradcam"`` or ``"hirescam"`` (over the last convolutional stage, or ``layer``), or
    ``"gradients"``; None: :func:`default_method`, the one that suits the model's head.
    """
    method = method or default_method(model)
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {', '.join(METHODS)}")
    x = read_image(model, image)
    inputs = normalise(model, x)
    if method in ("gradcam", "hirescam"):
        heat, probs, index = gradcam(model, inputs, target, layer, elementwise=method == "hirescam")
    else:
        heat, probs, index = input_gradients(model, inputs, target)
    return _figure(model, x[0], heat.cpu(), probs.cpu(), index, method)


def _figure(model: nn.Module, x: torch.Tensor, heat: torch.Tensor, probs: torch.Tensor, index: int, method: str):
    names = class_names(model)
    top = int(probs.argmax())
    fig = new_figure((10.0, 3.9))
    axes = fig.subplots(1, 3)
    shown = display_image(x)
    axes[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"input: predicted {names[top]} ({probs[top]:.2f})", fontsize=10)
    image = axes[1].imshow(heat.numpy(), cmap="inferno", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    what = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradients": "input gradients"}[method]
    axes[1].set_title(f"{what} for {names[index]} ({probs[index]:.2f})", fontsize=10)
    if heat.max() <= 0:  # say why the picture is empty rather than leave a black square
        axes[1].text(0.5, 0.5, "zero everywhere: no positive\nevidence at this stage" +
                     ("\n(try hirescam)" if method == "gradcam" else ""), ha="center", va="center",
                     color="white", fontsize=9, transform=axes[1].transAxes)
    axes[2].imshow(shown, cmap="gray", vmin=0, vmax=1)
    axes[2].imshow(heat.numpy(), cmap="inferno", vmin=0, vmax=1, alpha=0.55)
    axes[2].set_title("overlaid", fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{getattr(model, 'model_name', type(model).__name__)}: where it looks", fontsize=11)
    fig.tight_layout()
    return fig
