"""Training on several processes started by torchrun: one per GPU, DistributedDataParallel.

``torchrun --nproc-per-node N -m moderncnn train MODEL ...`` (or :func:`~moderncnn.train.fit` in a script that
torchrun starts) trains with the same recipe as one process: every step's batch, the recipe's batch size, is
split into N near-equal contiguous shares of the same shuffled order, and DDP averages the N gradients, so the
global batch, the lr and the schedule stay the recipe's. Without batch norm or dropout the weights follow the
single-process run's up to float rounding (tests/test_distributed.py checks it).

What differs from one process, as in torchvision's reference scripts without ``--sync-bn``: batch norm
normalises each share with its own statistics (its running statistics are rank 0's, broadcast before every
forward and before each test pass), and dropout draws differ. Rank 0 alone reads the run directory first and
writes it, and prints; the test set is split across processes too and the counts summed. ``--resume`` has
every process read the checkpoint, so the run directory must be where all of them see it (one machine, or a
shared file system).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

__all__ = ["World", "world_from_env", "local_device", "join", "leave", "on_main", "main_first", "all_sum",
           "broadcast_buffers"]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands among those torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start several processes with "
                         "torchrun") from None
    return World(rank=rank, size=size, local_rank=local) if size > 1 else World()


def local_device(world: World, device: str | torch.device | None) -> str | torch.device | None:
    """Under torchrun, ``None`` or ``"cuda"`` means this process's own GPU (LOCAL_RANK); else ``device``."""
    if world.distributed and torch.cuda.is_available() and (device is None or str(device) == "cuda"):
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


def join(world: World, device: torch.device) -> bool:
    """Join the process group (NCCL for CUDA, else gloo) unless the caller already has; True if joined here."""
    if not world.distributed:
        return False
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; train in one process")
    if dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    except (ValueError, RuntimeError) as e:  # no MASTER_ADDR, a rendezvous that timed out
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"WORLD_SIZE={world.size} asks for several processes, but they could not join ({reason}); "
                         f"start them with torchrun, or unset WORLD_SIZE to train in one") from None
    return True


def leave(joined: bool) -> None:
    """Leave the process group if :func:`join` joined it (the caller's own group stays)."""
    if joined and dist.is_initialized():
        dist.destroy_process_group()


def _raise_like(kind: type, message: str) -> None:
    try:
        error = kind(message)
    except Exception:  # an exception type whose constructor wants more than a message
        error = RuntimeError(message)
    raise error


def on_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; its (small, picklable) result, or its error, on every rank."""
    if not world.distributed:
        return fn()
    box: list[Any] = [None, None]
    error = None
    if world.main:
        try:
            box[0] = fn()
        except Exception as e:
            error, box[1] = e, (type(e), str(e))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[1] is not None:
        _raise_like(*box[1])
    return box[0]


def main_first(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then on the others once it succeeded (a download or a cache filled once)."""
    if not world.distributed:
        return fn()
    done: list[T] = []
    on_main(world, lambda: done.append(fn()))  # only success travels, not the result
    return done[0] if world.main else fn()


def all_sum(world: World, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over every process (one collective for all of them, float64 on the way)."""
    if not world.distributed:
        return list(values)
    flat = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in values])
    flat = _on_backend_device(flat, dist.all_reduce)
    out, i = [], 0
    for v in values:
        out.append(flat[i:i + v.numel()].view(v.shape).to(v.dtype))
        i += v.numel()
    return out


def broadcast_buffers(world: World, module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every process, so all test the same model."""
    if world.distributed:
        for b in module.buffers():
            b.data.copy_(_on_backend_device(b.data, lambda t: dist.broadcast(t, src=0)))


def _on_backend_device(t: torch.Tensor, collective: Callable[[torch.Tensor], Any]) -> torch.Tensor:
    """``collective(t)`` in place, through a CPU copy where the backend is gloo and ``t`` is not (e.g. MPS)."""
    if dist.get_backend() == "gloo" and t.device.type != "cpu":
        host = t.cpu()
        collective(host)
        return host.to(t.device)
    collective(t)
    return t
