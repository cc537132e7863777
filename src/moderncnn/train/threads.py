"""``fit(threads=N)``: torch's CPU threads for one run, and torch's own setting back afterwards.

torch's thread count is process-wide: a library that set it for good would change every later computation of
the user's process. On a busy 2-core machine one thread can be the faster choice (docs/training.md).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["using_threads", "check_threads"]


def check_threads(threads: int | None) -> None:
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 (or None: torch's default), got {threads!r}")


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Within: ``threads`` intra-op threads (None: as they are). Yields the count in use."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
