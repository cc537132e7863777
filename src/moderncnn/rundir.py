"""The run directory: one training run on disk, and its lifecycle (claim, commit, resume, repair).

A run directory holds::

    run.json                what was trained, how, on what data (with checksums), with which speed options;
                            its status: running, finished, interrupted, failed or diverged
    model.safetensors       the weights after the last finished epoch (a hard link to the checkpoint's, else a copy)
    metrics.jsonl           one JSON object per finished epoch
    curves.png              the book's animator, as a picture
    checkpoints/latest.json the commit pointer: {"epoch": N, "weights": ..., "state": ...}
    checkpoints/epoch-000N.safetensors, checkpoints/epoch-000N.pt
                            epoch N's weights, and what --resume needs (optimizer, scheduler, RNG, history)
    .lock                   held by the process that trains it

Why a pointer: an epoch's weights and its state are two files, and a process can be killed (SIGKILL, a power
cut) between any two writes. Each file is written under a new name and fsync'ed, then one atomic rename of
the small pointer makes the pair current, and only then is the previous pair removed. Whatever instant a run
dies at, the pointer names a complete pair: the last finished epoch is always resumable, and nothing needs
``--overwrite`` after a crash. What a kill can leave behind (temporary files, an unreferenced pair, a stale
``model.safetensors``, missing metrics or curves) is repaired when the run is next claimed.

The lock is an advisory ``flock`` on ``.lock`` (``msvcrt.locking`` on Windows): a second process, or an
``--overwrite`` of a run that is training, is refused in one line; the kernel releases it when the process
dies, so a crashed run never stays locked.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .curves import curves_title, plot_curves
from .storage import (atomic_write, fsync_dir, load_state, save_state, save_weights, state_dict_tensors,
                         weights_epoch)
from .runschema import check_run_meta, check_state

__all__ = ["RunDir", "Checkpoint", "RunBusy", "deferred_signals", "json_safe"]

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.(safetensors|pt)$")
_TMP_FILE = re.compile(r"^\..+\.tmp$")


class RunBusy(ValueError):
    """Another process holds the run directory's lock."""


@dataclass(frozen=True)
class Checkpoint:
    """A committed epoch: its number, its weights file and its state file."""

    epoch: int
    weights: Path
    state: Path


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN, and run.json must be JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json_bytes(obj: Any, indent: int | None = 2) -> bytes:
    return (json.dumps(json_safe(obj), indent=indent, default=str, allow_nan=False) + "\n").encode()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them: a commit is never cut off by Ctrl-C,
    ``timeout``, ``docker stop``, systemd or SLURM (SIGKILL cannot be held: the pointer makes that safe)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    wanted = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None]
    previous = {s: signal.signal(s, lambda num, frame: received.append(num)) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(received[0])


class _Lock:
    """An exclusive, non-blocking advisory lock on a file, released by the kernel when the process dies."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f" (pid {int(self.path.read_text().split()[0])})"
        return ""

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases flock's lock
            self.fd = None


class RunDir:
    """One run directory: its paths, and what may be done with it (read, claim, commit, repair, release)."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        self.run_json = self.dir / "run.json"
        self.weights = self.dir / "model.safetensors"
        self.metrics = self.dir / "metrics.jsonl"
        self.curves = self.dir / "curves.png"
        self.confusion = self.dir / "confusion.png"
        self.checkpoints = self.dir / "checkpoints"
        self.pointer = self.checkpoints / "latest.json"
        self.legacy_state = self.dir / "state.pt"  # the layout before the pointer: model.safetensors + state.pt
        self._lock = _Lock(self.dir / ".lock")
        self._created = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.dir)!r})"

    # -- reading ---------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.run_json.is_file()

    def read_meta(self) -> dict[str, Any]:
        """run.json, which must be a JSON object."""
        try:
            meta = json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.run_json} is missing: give a run directory written by "
                                    f"'moderncnn train'") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.run_json} is not valid JSON ({e}); the run directory is damaged") from None
        return check_run_meta(meta, self.run_json)

    def checkpoint(self) -> Checkpoint | None:
        """The committed epoch the pointer names, or None when no epoch has finished."""
        if not self.pointer.is_file():
            return None
        try:
            ptr = json.loads(self.pointer.read_text(encoding="utf-8"))
            ckpt = Checkpoint(int(ptr["epoch"]), self.checkpoints / Path(ptr["weights"]).name,
                              self.checkpoints / Path(ptr["state"]).name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.pointer} is damaged ({type(e).__name__}); restore it, or start the run "
                             f"again with --overwrite") from None
        for p in (ckpt.weights, ckpt.state):
            if not p.is_file():
                raise ValueError(f"{self.pointer} names {p.name}, which is missing; restore it, or start the run "
                                 f"again with --overwrite")
        return ckpt

    def weights_file(self) -> Path:
        """The weights of the last finished epoch: the checkpoint's, else ``model.safetensors``."""
        ckpt = self.checkpoint()
        return ckpt.weights if ckpt is not None else self.weights

    def has_checkpoint(self) -> bool:
        return self.checkpoint() is not None or self._is_legacy()

    # -- the lifecycle ---------------------------------------------------------------------------------

    def claim(self, resume: bool, overwrite: bool) -> bool:
        """Lock the directory for this process and make it ready to train into; True when there is a run to
        resume. A directory already holding a run is refused unless ``resume`` or ``overwrite`` says what to
        do with it (a run with no finished epoch is simply started again)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"--out {self.dir} is a file, not a directory; choose another --out")
        self._created = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            locked = self._lock.acquire()
        except OSError as e:
            raise ValueError(f"cannot create the run directory {self.dir} ({e.strerror}); choose another "
                             f"--out") from None
        if not locked:
            raise RunBusy(f"{self.dir} is being trained by another process{self._lock.holder()}; wait for it, "
                          f"stop it, or choose another --out")
        try:
            return self._decide(resume, overwrite)
        except BaseException:
            self.release()
            raise

    def _decide(self, resume: bool, overwrite: bool) -> bool:
        has_run = self.exists()
        if has_run and not overwrite:
            self.repair()
        ckpt = self.checkpoint() if has_run and not overwrite else None
        if has_run and resume and ckpt is not None:
            return True
        if has_run and not overwrite and not resume and ckpt is not None:
            meta = self.read_meta()
            recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
            raise ValueError(f"{self.dir} already holds a run ({meta.get('model')} {recipe.get('name')}, "
                             f"{meta.get('status')}, {ckpt.epoch}/{recipe.get('epochs')} epochs); pass --resume to "
                             f"continue it, --overwrite to replace it, or choose another --out")
        if has_run and not overwrite:
            print(f"{self.dir} holds a run with no finished epoch: starting it again", file=sys.stderr)
        elif resume and not has_run:
            print(f"nothing to resume in {self.dir}: starting a new run", file=sys.stderr)
        return False

    def begin(self, meta: dict[str, Any], resuming: bool) -> None:
        """Start writing: a new run first clears what an earlier one left (only now, once this run's data and
        model are ready: a run that fails before it starts replaces nothing), then run.json says "running"."""
        if not resuming:
            self.clear()
        self.write_meta({**meta, "status": "running"})

    def clear(self) -> None:
        """Remove every file a run writes (the lock stays with its holder); other files are left alone."""
        for p in (self.run_json, self.weights, self.metrics, self.curves, self.confusion, self.legacy_state):
            p.unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        self._remove_temporary()

    def release(self, remove_if_empty: bool = False) -> None:
        """Let go of the lock; ``remove_if_empty``: also remove the directory if this claim created it and no
        file of a run was written into it (a run that failed before it started costs nothing)."""
        self._lock.release()
        if remove_if_empty and self._created and not self.exists():
            with contextlib.suppress(OSError):
                (self.dir / ".lock").unlink(missing_ok=True)
                self.dir.rmdir()

    def commit(self, epoch: int, model: torch.nn.Module, state: dict[str, Any], history: list[dict[str, Any]],
               meta: dict[str, Any], curves_title: str = "", curves: bool = True) -> Checkpoint:
        """Make ``epoch`` the run's last finished epoch: weights and state under new names, then the pointer
        (the commit itself), then the stable ``model.safetensors``, the metrics, the curves (unless
        ``curves=False``: a short epoch's caller draws them less often; :meth:`repair` brings them up to date)
        and run.json. SIGINT and SIGTERM wait until it is done."""
        self.checkpoints.mkdir(exist_ok=True)
        ckpt = Checkpoint(epoch, self.checkpoints / f"epoch-{epoch:04d}.safetensors",
                          self.checkpoints / f"epoch-{epoch:04d}.pt")
        tensors = state_dict_tensors(model)
        with deferred_signals():
            save_weights(ckpt.weights, tensors, epoch)
            save_state(ckpt.state, {**state, "epoch": epoch, "history": history})
            atomic_write(self.pointer, _json_bytes({"epoch": epoch, "weights": ckpt.weights.name,
                                                    "state": ckpt.state.name}))
            self._publish(ckpt)
            self._remove_unreferenced(ckpt)
            self.write_history(history, curves_title, curves)
            self.write_meta(meta)
        return ckpt

    def load(self) -> tuple[Checkpoint, dict[str, Any]]:
        """The committed checkpoint and its state (optimizer, scheduler, RNG, epoch, history)."""
        ckpt = self.checkpoint()
        if ckpt is None:
            raise ValueError(f"{self.dir} has no finished epoch to resume from")
        return ckpt, check_state(load_state(ckpt.state), ckpt.state, ckpt.epoch)

    def repair(self) -> None:
        """Undo what a kill can leave (call it holding the lock): temporary files, a pair the pointer does not
        name, a ``model.safetensors`` of another epoch, metrics and curves behind the checkpoint; a directory
        of the layout before the pointer is moved to it."""
        self._remove_temporary()
        self._adopt_legacy()
        ckpt = self.checkpoint()
        if ckpt is None:
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            return
        self._remove_unreferenced(ckpt)
        if not self.weights.is_file() or weights_epoch(self.weights) != ckpt.epoch:
            self._publish(ckpt)
        _, state = self.load()
        self.write_history(state["history"], curves_title(self.read_meta()) if self.exists() else "")

    # -- writing ---------------------------------------------------------------------------------------

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write(self.run_json, _json_bytes(meta))

    def write_history(self, history: list[dict[str, Any]], title: str = "", curves: bool = True) -> None:
        """metrics.jsonl and (``curves``) curves.png from the history of finished epochs."""
        atomic_write(self.metrics, b"".join(_json_bytes(h, indent=None) for h in history))
        if history and curves:
            plot_curves(history, self.curves, title=title)

    def _publish(self, ckpt: Checkpoint) -> None:
        """``model.safetensors`` <- the checkpoint's weights: a hard link (no copy), else a copy; atomically."""
        tmp = self.dir / f".model.safetensors.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(ckpt.weights, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(ckpt.weights, tmp)
        os.replace(tmp, self.weights)
        fsync_dir(self.dir)

    def _remove_unreferenced(self, ckpt: Checkpoint) -> None:
        keep = {ckpt.weights.name, ckpt.state.name, self.pointer.name}
        for p in self.checkpoints.iterdir() if self.checkpoints.is_dir() else ():
            if p.name not in keep and (_EPOCH_FILE.match(p.name) or _TMP_FILE.match(p.name)):
                p.unlink(missing_ok=True)

    def _remove_temporary(self) -> None:
        """Temporary files of writes a kill cut short (``atomic_write``'s ``.NAME.XXXX.tmp``)."""
        for folder in (self.dir, self.checkpoints):
            for p in folder.iterdir() if folder.is_dir() else ():
                if _TMP_FILE.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)

    def _is_legacy(self) -> bool:
        return not self.pointer.is_file() and self.legacy_state.is_file() and self.weights.is_file()

    def _adopt_legacy(self) -> None:
        """A run written before the pointer (``model.safetensors`` + ``state.pt``) moved to today's layout."""
        if not self._is_legacy():
            return
        state = load_state(self.legacy_state)
        epoch, weights_at = state.get("epoch") if isinstance(state, dict) else None, weights_epoch(self.weights)
        if epoch is None or weights_at != epoch:
            raise ValueError(f"{self.weights} (epoch {weights_at}) and {self.legacy_state} (epoch {epoch}) disagree: "
                             f"an older moderncnn was cut off while saving, and the run cannot go on; keep "
                             f"{self.weights.name} if you want its weights, then start again with --overwrite")
        self.checkpoints.mkdir(exist_ok=True)
        ckpt = Checkpoint(epoch, self.checkpoints / f"epoch-{epoch:04d}.safetensors",
                          self.checkpoints / f"epoch-{epoch:04d}.pt")
        shutil.copyfile(self.weights, ckpt.weights)
        save_state(ckpt.state, state)
        atomic_write(self.pointer, _json_bytes({"epoch": epoch, "weights": ckpt.weights.name,
                                                "state": ckpt.state.name}))
        self.legacy_state.unlink()

