"""Layers given another class for a while, and their own back: the one way a speed option changes a model.

A speed layer (:mod:`.rowconv`, :mod:`.patchpool`) computes what its plain layer computes, another way; it
is the same module (same parameters, buffers and state dict) with another class. :class:`ModuleSwaps` records
every such change and undoes them in the reverse order, whatever the order they were made in, so a model
handed to the trainer comes back exactly as it was, even after an error or Ctrl-C.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["ModuleSwaps"]


class ModuleSwaps:
    """A record of layers whose class was changed; :meth:`restore` (or leaving a ``with`` block) undoes it."""

    def __init__(self) -> None:
        self._done: list[tuple[nn.Module, type, tuple[str, ...]]] = []

    def swap(self, module: nn.Module, cls: type, **attrs: Any) -> None:
        """Give ``module`` the class ``cls`` (a subclass of its own) and instance attributes ``attrs``."""
        if not issubclass(cls, type(module)):
            raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
        self._done.append((module, type(module), tuple(attrs)))
        module.__class__ = cls
        module.__dict__.update(attrs)

    def modules(self) -> list[nn.Module]:
        return [m for m, _, _ in self._done]

    def restore(self) -> None:
        """Every swapped layer back to its class before, last swap first."""
        while self._done:
            module, cls, attrs = self._done.pop()
            module.__class__ = cls
            for name in attrs:
                module.__dict__.pop(name, None)

    def __len__(self) -> int:
        return len(self._done)

    def __enter__(self) -> "ModuleSwaps":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()
