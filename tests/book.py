"""Shared check: a book-form model is the book's own network (same state-dict layout, same outputs)."""

from __future__ import annotations

import torch
import torch.nn as nn


def assert_is_books_network(ours: nn.Module, book: nn.Module, x: torch.Tensor) -> None:
    """The book's state dict loads into ours strictly and both give the same eval-mode outputs on ``x``."""
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in book.state_dict().items()}
    ours.load_state_dict(book.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), book.eval()(x))
