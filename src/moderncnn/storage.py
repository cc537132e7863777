"""Files that survive a kill: atomic writes, weights as safetensors, the trainer's state.

Every file is written to a temporary file in the same directory, fsync'ed and moved over the old one with
``os.replace``, so an interrupted write leaves the previous version intact (:func:`atomic_write`). Weights
are safetensors (no pickle; they carry their epoch in the metadata); the trainer's state is ``torch.save``'d
and read back with ``weights_only=True``, so no file can run code. A run directory puts these files together
(:mod:`moderncnn.rundir`); a trained model is rebuilt from them by :mod:`moderncnn.checkpoint`.
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

__all__ = ["atomic_write", "fsync_dir", "unwrap", "state_dict_tensors", "weights_sha256", "save_weights",
           "weights_epoch", "read_safetensors", "load_weights", "describe_mismatch", "first_sentence", "save_state",
           "load_state"]


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


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = getattr(model.module, "_orig_mod", model.module)
    return model


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU copies (channels_last does not leak into the file)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap(model).state_dict().items()}


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes, values): a run records its starting weights'
    so that :func:`~moderncnn.train.initial_model` can prove it rebuilt them."""
    h = hashlib.sha256()
    for name, t in unwrap(model).state_dict().items():  # one tensor at a time: VGG's 0.5 GB is never copied whole
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
        raise ValueError(f"{path} is not a readable safetensors file of weights ({first_sentence(e)}); restore "
                         f"it or train again") from None


def read_safetensors(path: Path, what_to_do: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); {what_to_do}") from None


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model`` (strict: every key must match)."""
    path = Path(path)
    tensors = read_safetensors(path, "retrain or restore it")
    target = unwrap(model)
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        why = describe_mismatch(target.state_dict(), tensors) or str(e).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit the model {getattr(model, 'model_name', '')}: {why}; "
                         f"was it saved from another model or with other arguments?") from None


def describe_mismatch(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> str:
    """load_state_dict's many-line complaint, in one line: counts and the first key of each kind."""
    missing = [k for k in own if k not in loaded]
    unexpected = [k for k in loaded if k not in own]
    reshaped = [k for k in own if k in loaded and own[k].shape != loaded[k].shape]
    parts = [f"{len(missing)} missing keys (first {missing[0]!r})" if missing else "",
             f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})" if unexpected else "",
             (f"{len(reshaped)} of another shape (first {reshaped[0]!r}: file {tuple(loaded[reshaped[0]].shape)}, "
              f"model {tuple(own[reshaped[0]].shape)})") if reshaped else ""]
    return ", ".join(p for p in parts if p)


def first_sentence(e: BaseException) -> str:
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
        raise ValueError(f"{path} is damaged ({first_sentence(e)}); the run cannot go on from it: start it "
                         f"again with --overwrite (which replaces the run: copy model.safetensors first to keep its "
                         f"weights) or restore the file") from None
