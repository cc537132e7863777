"""A trained model from its files: a run's weights and input contract (:class:`Preprocessing`), rebuilt by
:func:`load_checkpoint`; weights of another run or of torchvision to start from (:func:`load_pretrained`).

How the files are written is :mod:`moderncnn.storage`; how a run directory puts them together and commits an
epoch, :mod:`moderncnn.rundir`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .registry import create_model
from .rundir import RunDir
from .storage import describe_mismatch, first_sentence, load_weights, read_safetensors, unwrap, weights_epoch

__all__ = ["Preprocessing", "load_checkpoint", "resolve_run", "read_state_dict", "load_pretrained",
           "pretrained_parameters"]


@dataclass(frozen=True)
class Preprocessing:
    """What a trained model expects of an image: channels, side, normalisation, and the names of its classes.

    :func:`~moderncnn.train.fit` and :func:`~moderncnn.checkpoint.load_checkpoint` attach it to the model as
    ``model.preprocessing``; :func:`predict` and :func:`evaluate` follow it, so the library gives the command
    line's answers. ``resize``: the side images were resized to in training (None: their native side);
    ``native``: the side of the data set's stored images, to which an image file is read first, as the data
    set's own images were, before the run's resize.
    """

    channels: int
    size: int
    resize: int | None = None
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    classes: tuple[str, ...] = ()
    native: int | None = None
    #: Logits summed over each image and its mirror image, as the run tested (its recipe's ``test_flip``).
    test_flip: bool = False

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: Any = "run.json") -> "Preprocessing":
        """From a run's metadata (run.json's ``input`` and ``data``); a malformed one is a one-line error."""
        inputs, data = meta.get("input"), meta.get("data")
        try:
            norm = inputs.get("normalize")
            return cls(channels=int(inputs["channels"]), size=int(inputs["size"]),
                       resize=None if inputs.get("resize") is None else int(inputs["resize"]),
                       normalize=None if norm is None else (tuple(map(float, norm[0])), tuple(map(float, norm[1]))),
                       classes=tuple(str(c) for c in data.get("classes", ())),
                       native=None if inputs.get("native_size") is None else int(inputs["native_size"]),
                       test_flip=inputs.get("test_flip") is True)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{where}: its 'input' or 'data' section is malformed; the run directory is "
                             f"damaged") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a run directory's weights, a ``.safetensors`` file, or a ``torch.save``'d state dict
    (``.pth``/``.pt``, e.g. torchvision's, plain or under ``"state_dict"``/``"model"``; loaded with
    ``weights_only=True``, so a file can hold no code)."""
    path = Path(path)
    if path.is_dir():
        path = resolve_run(path).weights
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file or run directory: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path, "give another file of weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path} is not a PyTorch state dict file ({first_sentence(e)}); give a .safetensors, "
                         f".pth or .pt file of weights, or a run directory") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict (a dict of tensors); give a file of weights")
    prefix = "module."  # saved from DistributedDataParallel
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_pretrained(model: nn.Module, source: str | Path) -> dict[str, Any]:
    """Start ``model`` from the weights in ``source`` (see :func:`read_state_dict`): fine-tuning.

    The module names must match (ours are torchvision's where it has the architecture, so its ImageNet
    weights load into ``resnet*``, ``vgg*`` and ``densenet*``). Two differences are bridged, as timm does:
    classifier tensors made for another number of classes are left as the model has them (its own init),
    and a first convolution made for 3 input channels is summed into 1 (or 1 repeated into 3, divided by 3).
    Anything else that does not fit is a one-line error. Returns what was done: ``{"source", "loaded",
    "kept" (classifier keys left as they were), "adapted" (first-convolution keys)}``.
    """
    target = unwrap(model)
    own = target.state_dict()
    loaded = read_state_dict(source)
    num_classes, in_channels = getattr(target, "num_classes", None), getattr(target, "in_channels", None)
    first_conv = next((k for k, v in own.items() if v.dim() == 4), None)
    kept, adapted, tensors = [], [], dict(loaded)
    for key, mine in own.items():  # in the model's order
        theirs = loaded.get(key)
        if theirs is None or mine.shape == theirs.shape or mine.dim() != theirs.dim():
            continue
        if mine.shape[0] == num_classes and mine.shape[1:] == theirs.shape[1:]:
            kept.append(key)
            tensors[key] = mine
        elif key == first_conv and mine.shape[1] == in_channels and mine.shape[2:] == theirs.shape[2:] \
                and mine.shape[0] == theirs.shape[0] and {mine.shape[1], theirs.shape[1]} == {1, 3}:
            adapted.append(key)
            tensors[key] = theirs.sum(1, keepdim=True) if mine.shape[1] == 1 else theirs.repeat(1, 3, 1, 1) / 3
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        why = describe_mismatch(own, tensors) or str(e).strip().splitlines()[0]
        raise ValueError(f"{source} does not fit the model {getattr(target, 'model_name', '')}: {why}; "
                         f"start from weights of the same architecture") from None
    return {"source": str(source), "loaded": len(tensors) - len(kept), "kept": kept, "adapted": adapted}


def pretrained_parameters(model: nn.Module, record: dict[str, Any] | None) -> frozenset[str]:
    """The names of ``model``'s parameters that :func:`load_pretrained` loaded, from what it returned (run.json's
    ``init_from``; None: nothing loaded). Its load is strict, so that is every parameter but the classifier
    tensors it ``kept``."""
    if not isinstance(record, dict):
        return frozenset()
    kept = set(record.get("kept") or ())
    return frozenset(name for name, _ in unwrap(model).named_parameters() if name not in kept)


def resolve_run(path: str | Path) -> RunDir:
    """A run directory, or a ``model.safetensors`` / ``run.json`` file inside one, as a
    :class:`~moderncnn.rundir.RunDir` that holds a run and finished weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint or run directory: {path}")
    run = RunDir(path if path.is_dir() else path.parent)
    if not run.exists():
        raise FileNotFoundError(f"{run.run_json} is missing: give a run directory written by 'moderncnn train' "
                                f"(it holds run.json and model.safetensors)")
    if not run.weights_file().is_file():
        raise FileNotFoundError(f"{run.dir} holds no weights yet (no epoch has finished)")
    return run


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its run directory (or its ``model.safetensors``), in eval mode.

    Returns ``(model, metadata)``: metadata is ``run.json`` plus ``"epoch"`` (of the weights) and
    ``"run_dir"``. The model carries the run's input contract as ``model.preprocessing`` (a
    :class:`Preprocessing`: channels, size, normalisation, class names), so
    ``predict(model, files)`` and ``evaluate(model, dataset)`` prepare images as the run was trained.
    """
    run = resolve_run(path)
    meta = run.read_meta()
    kwargs = meta.get("model_kwargs", {})
    if not isinstance(meta.get("model"), str) or not isinstance(kwargs, dict):
        raise ValueError(f"{run.run_json} names no model (or its model_kwargs are not a JSON object); the run "
                         f"directory is damaged")
    model = create_model(meta["model"], **kwargs)
    weights = run.weights_file()
    load_weights(weights, model)
    meta["epoch"] = weights_epoch(weights)
    meta["run_dir"] = str(run.dir)
    model.preprocessing = Preprocessing.from_meta(meta, run.run_json)
    return model.to(device).eval(), meta
