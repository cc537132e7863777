"""Checkpoint files: written atomically, read with one-line errors, and the model rebuilt from a run.

Every file is written to a temporary file in the same directory, fsync'ed and moved over the old one with
``os.replace``, so an interrupted write leaves the previous version intact (:func:`atomic_write`). Weights
are safetensors (no pickle; they carry their epoch in the metadata); the trainer's state is ``torch.save``'d
and read back with ``weights_only=True``, so no file can run code. How a run directory puts these files
together, and commits an epoch, is :mod:`moderncnn.rundir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import safe_open
from safetensors.torch import save as st_save

__all__ = ["atomic_write", "new_figure", "save_figure", "save_weights", "load_weights", "weights_epoch",
           "state_dict_tensors", "save_state", "load_state", "resolve_run", "load_checkpoint", "read_state_dict",
           "load_pretrained", "weights_sha256"]


_UMASK = os.umask(0)
os.umask(_UMASK)

def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make the renames in ``folder`` durable (not possible on every OS: then a no-op)."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure drawn off-screen (Agg): no GUI backend, no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, buf.getvalue())
    return Path(path)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = getattr(model.module, "_orig_mod", model.module)
    return model


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU copies (channels_last does not leak into the file)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in _unwrap(model).state_dict().items()}


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes, values): a run records its starting weights'
    so that :func:`~moderncnn.train.initial_model` can prove it rebuilt them."""
    h = hashlib.sha256()
    for name, t in _unwrap(model).state_dict().items():  # one tensor at a time: VGG's 0.5 GB is never copied whole
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name} {tuple(t.shape)} {t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # as bytes: bf16 has no numpy dtype
    return h.hexdigest()


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor] | nn.Module, epoch: int) -> None:
    """A state dict (or a model's) as safetensors, with its epoch in the metadata."""
    if isinstance(tensors, nn.Module):
        tensors = state_dict_tensors(tensors)
    atomic_write(path, st_save(tensors, metadata={"epoch": str(epoch), "format": "pt"}))


def weights_epoch(path: str | Path) -> int | None:
    """The epoch stored in a weights file's metadata (None when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get("epoch")
        return int(value) if value is not None else None
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file of weights ({_first_sentence(e)}); restore "
                         f"it or train again") from None


def _read_safetensors(path: Path, what_to_do: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); {what_to_do}") from None


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model`` (strict: every key must match)."""
    path = Path(path)
    tensors = _read_safetensors(path, "retrain or restore it")
    target = _unwrap(model)
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        why = _mismatch(target.state_dict(), tensors) or str(e).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit the model {getattr(model, 'model_name', '')}: {why}; "
                         f"was it saved from another model or with other arguments?") from None


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
        return _read_safetensors(path, "give another file of weights")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path} is not a PyTorch state dict file ({_first_sentence(e)}); give a .safetensors, "
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
    target = _unwrap(model)
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
        why = _mismatch(own, tensors) or str(e).strip().splitlines()[0]
        raise ValueError(f"{source} does not fit the model {getattr(target, 'model_name', '')}: {why}; "
                         f"start from weights of the same architecture") from None
    return {"source": str(source), "loaded": len(tensors) - len(kept), "kept": kept, "adapted": adapted}


def _mismatch(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> str:
    """load_state_dict's many-line complaint, in one line: counts and the first key of each kind."""
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    reshaped = [k for k in own if k in loaded and own[k].shape != loaded[k].shape]
    parts = [f"{len(missing)} missing keys (first {missing[0]!r})" if missing else "",
             f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})" if unexpected else "",
             (f"{len(reshaped)} of another shape (first {reshaped[0]!r}: file {tuple(loaded[reshaped[0]].shape)}, "
              f"model {tuple(own[reshaped[0]].shape)})") if reshaped else ""]
    return ", ".join(p for p in parts if p)


def _first_sentence(e: BaseException) -> str:
    """torch.load's errors run to many lines of advice; the first sentence says what is wrong."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path} is damaged ({_first_sentence(e)}); the run cannot go on from it: start it "
                         f"again with --overwrite (which replaces the run: copy model.safetensors first to keep its "
                         f"weights) or restore the file") from None


def resolve_run(path: str | Path) -> "RunDir":
    """A run directory, or a ``model.safetensors`` / ``run.json`` file inside one, as a
    :class:`~moderncnn.rundir.RunDir` that holds a run and finished weights."""
    from .rundir import RunDir

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
    :class:`~moderncnn.evaluate.Preprocessing`: channels, size, normalisation, class names), so
    ``predict(model, files)`` and ``evaluate(model, dataset)`` prepare images as the run was trained.
    """
    from .evaluate import Preprocessing
    from .registry import create_model

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
