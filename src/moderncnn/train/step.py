"""The recipe made into objects: the book's init, the optimizer, the lr schedule, the loss, and one SGD step."""

from __future__ import annotations

from typing import Any, Collection

import torch
import torch.nn as nn

from ..cudagraph import GraphedStep, TrainStep
from ..evaluate import autocast
from ..recipes import Recipe
from ..storage import unwrap

__all__ = ["init_weights", "build_optimizer", "build_scheduler", "lr_groups", "build_loss", "make_train_step",
           "TrainStep"]


def init_weights(model: nn.Module) -> nn.Module:
    """d2l's ``init_weights``: Xavier-uniform on the weight of every exact Linear/Conv2d; biases untouched."""
    def init(m: nn.Module) -> None:
        if type(m) in (nn.Linear, nn.Conv2d):  # the book's type(m) == ..., so subclasses keep their own init
            nn.init.xavier_uniform_(m.weight)

    return model.apply(init)


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device | None = None,
                    pretrained: Collection[str] = ()) -> torch.optim.SGD:
    """Plain SGD for the book; momentum/Nesterov and weight decay on conv/linear weights only for others.

    ``pretrained``: the names of the parameters ``--init-from`` loaded
    (:func:`~moderncnn.checkpoint.pretrained_parameters`). Unless ``recipe.pretrained_lr_scale`` is 1, they
    train at ``lr * pretrained_lr_scale`` in groups of their own (marked ``"pretrained": True``), the rest (the
    new classifier) at ``lr``; :func:`build_scheduler` keeps that ratio at every step.
    """
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    split = bool(pretrained) and recipe.pretrained_lr_scale != 1
    if split:  # without one, the groups are those of every run before the scale existed (their resume)
        parts = [([p for n, p in named if n in pretrained], {"lr": recipe.lr * recipe.pretrained_lr_scale,
                                                             "pretrained": True}),
                 ([p for n, p in named if n not in pretrained], {"lr": recipe.lr, "pretrained": False})]
    else:
        parts = [([p for _, p in named], {})]
    groups: Any = []
    for params, extra in parts:
        if recipe.weight_decay:
            groups += [{"params": [p for p in params if p.dim() > 1], "weight_decay": recipe.weight_decay, **extra},
                       {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0, **extra}]
        else:
            groups.append({"params": params, **extra})
    if split:
        groups = [g for g in groups if g["params"]]  # every tensor loaded: no new classifier
    fused = device is not None and device.type == "cuda"
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                           fused=fused or None, foreach=None if fused else True)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int,
                    steps: int | None = None):
    """The recipe's per-step lr schedule over its epochs (or ``steps`` in all), or None for a constant lr.
    Each parameter group follows it from its own lr (the pretrained layers' scaled one, :func:`build_optimizer`)."""
    total = recipe.epochs * steps_per_epoch if steps is None else steps
    if recipe.schedule == "onecycle":
        peaks = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


def lr_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each parameter group's tensors, peak lr, weight decay and whether ``--init-from`` loaded them, for
    run.json (before any step)."""
    return [{"tensors": len(g["params"]), "lr": g.get("max_lr", g.get("initial_lr", g["lr"])),
             "weight_decay": g["weight_decay"], "pretrained": g.get("pretrained")} for g in optimizer.param_groups]


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
    aux_weight = float(getattr(unwrap(model), "aux_loss_weight", 0.0) or 0.0)

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


def by_batch_size(size: int, full: TrainStep, other: TrainStep) -> TrainStep:
    """``full`` for batches of ``size`` examples, ``other`` for the rest."""
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (full if y.shape[0] == size else other)(x, y)

    return step
