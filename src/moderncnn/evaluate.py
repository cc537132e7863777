"""Evaluation and prediction: accuracy, per-class accuracy, confusion matrix, top-k classes of images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = ["select_device", "autocast", "evaluate", "format_per_class", "plot_confusion",
           "confusion_figure", "load_images", "read_images", "image_files", "predict"]

Normalize = tuple[Sequence[float], Sequence[float]]


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
    from .figures import save_figure

    return save_figure(confusion_figure(result, title, normalize), path)


def confusion_figure(result: dict[str, Any], title: str = "", normalize: bool = False):
    """The confusion matrix of :func:`evaluate` as a matplotlib Figure (rows: true class, columns: predicted).

    The colour is always the row's share (so a rare class is as visible as a common one), with a colour bar;
    each cell's number is the count of images, or with ``normalize`` that share.
    """
    from .figures import new_figure

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


def load_images(paths: Sequence[str | Path], channels: int, size: int,
                on_error: Callable[[Path, Exception], None] | None = None) -> torch.Tensor:
    """Read image files as one uint8 batch (N, channels, size, size): grey or RGB, resized to a square.

    Any format and colour mode Pillow reads is accepted, read exactly as training reads a folder of images
    (:func:`moderncnn.data.images.read_square`: a pixel limit, 16-bit and palette images scaled, Pillow's
    bilinear resize); a missing file or one that is not an image is a one-line error naming it, or, given
    ``on_error(path, error)``, reported there and left out of the batch.
    """
    from .data.images import read_square

    if channels not in (1, 3):
        raise ValueError(f"images can be read for 1- or 3-channel models, not {channels}-channel ones")
    batch = []
    for p in map(Path, paths):
        try:
            if not p.exists():
                raise FileNotFoundError(f"no such image file: {p}")
            pixels = torch.from_numpy(read_square(p, channels == 1, size).copy())
        except (OSError, ValueError) as e:
            if on_error is None:
                raise
            on_error(p, e)
            continue
        batch.append(pixels.view(size, size, channels).permute(2, 0, 1))
    return torch.stack(batch) if batch else torch.empty(0, channels, size, size, dtype=torch.uint8)


def read_images(paths: Sequence[str | Path], channels: int, size: int, native: int | None = None,
                on_error: Callable[[Path, Exception], None] | None = None) -> torch.Tensor:
    """Image files as a float batch in [0, 1] at ``size``, prepared as the run prepared its data: read at the
    data set's ``native`` side (as its images were stored), then resized as the loader resizes a batch. A
    photo predicted by a Fashion-MNIST AlexNet is thus first made 28x28, then enlarged to 224 as in training."""
    from .data import resize_batch

    return resize_batch(load_images(paths, channels, native or size, on_error).float() / 255, size)


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
            batch_size: int = 256,
            on_error: Callable[[Path, Exception], None] | None = None) -> list[list[tuple[str, float]] | None]:
    """Top-k ``(class, probability)`` for each image.

    ``model``: a model, or a run directory (or its ``model.safetensors``) to load. ``images``: file paths
    (see :func:`image_files` for folders), or a batch (N, C, H, W) as uint8 or floats in [0, 1]. They are
    prepared as the model's ``preprocessing`` says (a trained or loaded model has it: its size, normalisation
    and class names), else resized to ``size`` (default: the model's ``default_image_size``) and normalised
    with ``normalize=(mean, std)``; ``classes`` default to the preprocessing's, else the class indices as
    strings. Files are read ``batch_size`` at a time, so a folder of any size fits in memory. A file that
    cannot be read is an error; given ``on_error(path, error)``, it is reported there, its entry is None and
    the other files are predicted. A run whose recipe tested with ``test_flip`` predicts from the mean logits
    of each image and its mirror image.
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
    flip = bool(getattr(prep, "test_flip", False))
    model.eval()
    results: list[list[tuple[str, float]] | None] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        if isinstance(chunk, torch.Tensor):
            x = chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk.float()
            results += _top(model, resize_batch(x, size) if size else x, normalize, device, topk, names, flip)
            continue
        unread: set[Path] = set()

        def skip(path: Path, error: Exception) -> None:
            unread.add(path)
            on_error(path, error)

        x = read_images(chunk, channels, size, native, skip if on_error is not None else None)
        tops = iter(_top(model, x, normalize, device, topk, names, flip) if len(x) else [])
        results += [None if Path(p) in unread else next(tops) for p in chunk]
    return results


def _top(model: nn.Module, x: torch.Tensor, normalize: Normalize | None, device: torch.device, topk: int,
         names: list[str] | None, flip: bool = False) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) of a float batch in [0, 1], normalised as the run was; ``flip``: from the
    mean logits of each image and its mirror image, as a run with test-time flip tested."""
    if normalize is not None:
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in normalize)
        x = (x - mean) / std
    x = x.to(device)
    logits = model(x).float()
    if flip:
        logits = (logits + model(x.flip(3)).float()) / 2
    probs = logits.softmax(1)
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    names = names or [str(c) for c in range(probs.shape[1])]
    values, indices = top.values.cpu(), top.indices.cpu()
    return [[(names[int(c)], float(p)) for p, c in zip(ps, idx)] for ps, idx in zip(values, indices)]
