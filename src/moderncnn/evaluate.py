"""Evaluation and prediction: accuracy, per-class accuracy, confusion matrix, top-k classes of images."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = ["select_device", "autocast", "Preprocessing", "evaluate", "format_per_class", "plot_confusion",
           "confusion_figure", "load_images", "read_images", "image_files", "predict"]

Normalize = tuple[Sequence[float], Sequence[float]]


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


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else cuda, then mps, then cpu. ``"cuda"`` becomes ``cuda:0`` (the book prints that)."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xla...: torch names them, but they cannot train here
        raise ValueError(f"device {str(device)!r} cannot train or evaluate a model; use cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
        device = torch.device("cuda", device.index or 0)
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps asked for, but MPS is not available; use --device cpu")
    return device


def autocast(device: torch.device, dtype: torch.dtype | None,
             cache: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` when ``dtype`` is given; a no-op otherwise. ``cache=False``: no cache of
    the weights' casts, which a CUDA graph capture needs."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def _batches(data: Any, device: torch.device, batch_size: int, resize: int | None, normalize: Normalize | None,
             channels_last: bool, subset: int | None) -> tuple[Iterable, list[str] | None]:
    """(x, y) batches on ``device`` from an ImageDataset, or any iterable of (x, y) batches as it is."""
    from .data import DeviceLoader, ImageDataset

    if isinstance(data, ImageDataset):
        loader = DeviceLoader(data, batch_size, device=device, resize=resize, normalize=normalize,
                              channels_last=channels_last, subset=subset)
        return loader, list(data.classes)
    if subset is not None:
        raise ValueError("evaluate(subset=N) needs an ImageDataset: prepared batches are evaluated as they are")
    return data, list(getattr(getattr(data, "dataset", None), "classes", []) or []) or None


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, device: str | torch.device | None = None, *, batch_size: int = 256,
             resize: int | None = None, normalize: Normalize | None = None, channels_last: bool = False,
             amp_dtype: torch.dtype | None = None, classes: Sequence[str] | None = None,
             subset: int | None = None, test_flip: bool | None = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on ``data``.

    ``data`` is an :class:`~moderncnn.data.ImageDataset` (batched here with ``resize``/``normalize``, by
    default the model's ``preprocessing``, as a trained or loaded model has it) or an iterable of ``(x, y)``
    batches already prepared (e.g. a :class:`~moderncnn.data.DeviceLoader`).
    ``subset=n``: only the first n images of a fixed class-balanced permutation of an ImageDataset.
    ``test_flip``: sum the logits of each image and its mirror image (default: as the model's
    ``preprocessing`` says, i.e. as its run tested; else no). Counts
    stay on the device until the end (one host sync). Returns ``{"accuracy": float, "per_class": {class:
    accuracy}, "confusion": int64 tensor [true, predicted], "classes": [...], "num_examples": int}``.
    """
    device = select_device(device) if device is not None else next(model.parameters()).device
    prep = getattr(model, "preprocessing", None)
    if prep is not None and resize is None and normalize is None:
        resize, normalize = prep.resize, prep.normalize
    if test_flip is None:
        test_flip = bool(getattr(prep, "test_flip", False))
    batches, found = _batches(data, device, batch_size, resize, normalize, channels_last, subset)
    classes = list(classes or found or [])
    k = len(classes) or getattr(model, "num_classes", None)
    if not k:
        raise ValueError("evaluate needs the class names (classes=[...]) or a model with num_classes")
    was_training = model.training
    model.eval()
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    try:
        for x, y in batches:
            with autocast(device, amp_dtype):
                logits = model(x)
                if test_flip:  # summed in float: bf16 logits would round the sum
                    logits = logits.float() + model(x.flip(3)).float()
            confusion += torch.bincount(y * k + logits.argmax(1), minlength=k * k)
    finally:
        model.train(was_training)
    confusion = confusion.view(k, k).cpu()
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("evaluate got no examples: the test set is empty")
    per_true = confusion.sum(1).clamp_min(1)
    names = classes or [str(i) for i in range(k)]
    per_class = dict(zip(names, (confusion.diag() / per_true).tolist()))
    return {"accuracy": confusion.diag().sum().item() / total, "per_class": per_class, "confusion": confusion,
            "classes": names, "num_examples": total}


def format_per_class(result: dict[str, Any]) -> str:
    """The per-class accuracy of :func:`evaluate` as a small text table."""
    width = max(len("class"), *(len(c) for c in result["per_class"]))
    counts = result["confusion"].sum(1).tolist()
    lines = [f"{'class':<{width}}  accuracy  images"]
    lines += [f"{c:<{width}}  {a:8.3f}  {n:6d}" for (c, a), n in zip(result["per_class"].items(), counts)]
    lines.append(f"{'all':<{width}}  {result['accuracy']:8.3f}  {result['num_examples']:6d}")
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: str | Path, title: str = "", normalize: bool = False) -> Path:
    """Save the confusion matrix of :func:`evaluate` as a PNG (see :func:`confusion_figure`)."""
    from .checkpoint import save_figure

    return save_figure(confusion_figure(result, title, normalize), path)


def confusion_figure(result: dict[str, Any], title: str = "", normalize: bool = False):
    """The confusion matrix of :func:`evaluate` as a matplotlib Figure (rows: true class, columns: predicted).

    The colour is always the row's share (so a rare class is as visible as a common one), with a colour bar;
    each cell's number is the count of images, or with ``normalize`` that share.
    """
    from .checkpoint import new_figure

    cm = result["confusion"].float()
    rows = cm / cm.sum(1, keepdim=True).clamp_min(1)
    names = result["classes"]
    k = len(names)
    fig = new_figure((2.2 + 0.6 * k, 1.0 + 0.55 * k))
    ax = fig.add_subplot()
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                count = int(result["confusion"][i, j])
                value = (f"{rows[i, j]:.2f}".lstrip("0") if count else "") if normalize else count  # blank: none
                ax.text(j, i, value, ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"test accuracy {result['accuracy']:.3f}")
    return fig


def load_images(paths: Sequence[str | Path], channels: int, size: int) -> torch.Tensor:
    """Read image files as one uint8 batch (N, channels, size, size): grey or RGB, resized to a square.

    Any format and colour mode Pillow reads is accepted, read exactly as training reads a folder of images
    (:func:`moderncnn.data.images.read_square`: a pixel limit, 16-bit and palette images scaled, Pillow's
    bilinear resize); a missing file or one that is not an image is a one-line error naming it.
    """
    from .data.images import read_square

    if channels not in (1, 3):
        raise ValueError(f"images can be read for 1- or 3-channel models, not {channels}-channel ones")
    batch = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such image file: {p}")
        pixels = torch.from_numpy(read_square(p, channels == 1, size).copy())
        batch.append(pixels.view(size, size, channels).permute(2, 0, 1))
    return torch.stack(batch)


def read_images(paths: Sequence[str | Path], channels: int, size: int, native: int | None = None) -> torch.Tensor:
    """Image files as a float batch in [0, 1] at ``size``, prepared as the run prepared its data: read at the
    data set's ``native`` side (as its images were stored), then resized as the loader resizes a batch. A
    photo predicted by a Fashion-MNIST AlexNet is thus first made 28x28, then enlarged to 224 as in training."""
    from .data import resize_batch

    return resize_batch(load_images(paths, channels, native or size).float() / 255, size)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The paths given, with each folder replaced by the image files under it (recursively, sorted).

    Image files are those torchvision's ImageFolder takes (by extension), found as training finds a folder's
    (:func:`moderncnn.data.images.list_image_files`: hidden files and folders skipped, regular files only, a
    symlinked folder walked once).
    """
    from .data.images import list_image_files

    files: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        from torchvision.datasets.folder import IMG_EXTENSIONS  # imported only here: it costs ~2 s

        found = sorted(list_image_files(p, IMG_EXTENSIONS))
        if not found:
            raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in the folder {p}")
        files += found
    return files


@torch.no_grad()
def predict(model: nn.Module | str | Path, images: torch.Tensor | Sequence[str | Path],
            classes: Sequence[str] | None = None, topk: int = 3, *, size: int | None = None,
            normalize: Normalize | None = None, device: str | torch.device | None = None,
            batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """Top-k ``(class, probability)`` for each image.

    ``model``: a model, or a run directory (or its ``model.safetensors``) to load. ``images``: file paths
    (see :func:`image_files` for folders), or a batch (N, C, H, W) as uint8 or floats in [0, 1]. They are
    prepared as the model's ``preprocessing`` says (a trained or loaded model has it: its size, normalisation
    and class names), else resized to ``size`` (default: the model's ``default_image_size``) and normalised
    with ``normalize=(mean, std)``; ``classes`` default to the preprocessing's, else the class indices as
    strings. Files are read ``batch_size`` at a time, so a folder of any size fits in memory. A run whose
    recipe tested with ``test_flip`` predicts from the mean logits of each image and its mirror image.
    """
    if isinstance(model, (str, Path)):
        from .checkpoint import load_checkpoint

        model = load_checkpoint(model, select_device(device))[0]
    device = select_device(device) if device is not None else next(model.parameters()).device
    prep = getattr(model, "preprocessing", None)
    native = None
    if prep is not None:
        native = prep.native if size in (None, prep.size) else None  # another size asked: read straight to it
        size, normalize = size or prep.size, normalize if normalize is not None else prep.normalize
        classes = classes or prep.classes or None
    size = size or getattr(model, "default_image_size", None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) and not size:
        raise ValueError("predict needs size= for images read from files (the model has no default size)")
    from .data import resize_batch

    channels = prep.channels if prep is not None else getattr(model, "in_channels", 3)
    names = list(classes) if classes else None
    model.eval()
    results: list[list[tuple[str, float]]] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        if isinstance(chunk, torch.Tensor):
            x = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk.float()
            if size:
                x = resize_batch(x, size)
        else:
            x = read_images(chunk, channels, size, native)
        if normalize is not None:
            mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in normalize)
            x = (x - mean) / std
        x = x.to(device)
        logits = model(x).float()
        if getattr(prep, "test_flip", False):  # as the run tested: the mean logits of the image and its mirror
            logits = (logits + model(x.flip(3)).float()) / 2
        probs = logits.softmax(1)
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        names = names or [str(c) for c in range(probs.shape[1])]
        values, indices = top.values.cpu(), top.indices.cpu()
        results += [[(names[int(c)], float(p)) for p, c in zip(ps, idx)] for ps, idx in zip(values, indices)]
    return results
