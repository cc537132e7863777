"""The book's Animator in a notebook: the training curves redrawn in place once an epoch while a run trains.

``fit(..., plot=True)`` passes its epochs to :class:`LiveCurves`; outside a notebook (a terminal, the command
line) it draws nothing and costs nothing, since the run already writes curves.png.
"""

from __future__ import annotations

import io
from typing import Any, Callable

__all__ = ["in_notebook", "LiveCurves", "live_curves"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, classic Notebook, VS Code, Colab), False in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None  # a terminal IPython has no kernel


class LiveCurves:
    """Called with each epoch's record (``fit``'s ``on_epoch_end``): redraws train loss, train acc (at the
    book's five points an epoch) and test acc as one image updated in place, so the output does not grow."""

    def __init__(self, title: str = "", enabled: bool | None = None):
        self.title = title
        self.enabled = in_notebook() if enabled is None else enabled
        self.history: list[dict[str, Any]] = []
        self._handle = None

    def __call__(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        from IPython.display import Image, display

        from ..train.report import curves_figure

        buf = io.BytesIO()
        curves_figure(self.history, self.title).savefig(buf, format="png", dpi=100, bbox_inches="tight")
        image = Image(data=buf.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


def live_curves(then: Callable[[dict[str, Any]], None] | None, title: str = "") -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch_end`` that redraws the curves (in a notebook), then calls ``then`` (the user's own)."""
    curves = LiveCurves(title)

    def on_epoch_end(record: dict[str, Any]) -> None:
        curves(record)
        if then is not None:
            then(record)

    return on_epoch_end
