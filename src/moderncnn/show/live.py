"""The book's Animator in a notebook: the training curves redrawn in place while a run trains.

``fit(..., plot=True)`` passes :class:`LiveCurves` each of the epoch's five points (the running train loss and
accuracy, as the book's animator plots them) and each finished epoch (with its test accuracy). Outside a
notebook (a terminal, the command line) it draws nothing and costs nothing, since the run writes curves.png.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

__all__ = ["in_notebook", "LiveCurves", "live_curves"]

Record = dict[str, Any]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, classic Notebook, VS Code, Colab), False in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None  # a terminal IPython has no kernel


class LiveCurves:
    """One image of the curves, updated in place so that the output does not grow.

    Call it with each finished epoch's record (``fit``'s ``on_epoch_end``); :meth:`point` with the epoch's
    record so far (``fit``'s ``on_point``: its ``points``, no test accuracy yet) redraws within the epoch.
    A drawing costs about 70 ms, against half a second between two points of LeNet on a laptop CPU: so that
    the plot never costs more than ``max_share`` of the run, a point that comes too soon after the last
    drawing is drawn with the next one (an epoch's end is always drawn; None: every point).
    """

    def __init__(self, title: str = "", enabled: bool | None = None, max_share: float | None = 0.1):
        self.title = title
        self.enabled = in_notebook() if enabled is None else enabled
        self.max_share = max_share
        self.history: list[Record] = []
        self.drawings = 0
        self.epochs: int | None = None  # the run's length, from the points: the x axis stays put as it trains
        self._handle = None
        self._drawn_at = self._cost = 0.0

    def point(self, partial: Record) -> None:
        """Redraw with the current epoch's points so far after the finished epochs."""
        self.epochs = partial.get("epochs", self.epochs)
        since = time.perf_counter() - self._drawn_at
        if self.max_share is None or self._cost <= self.max_share * (since + self._cost):
            self._draw(self.history + [partial])

    def __call__(self, record: Record) -> None:
        self.history.append(record)
        self._draw(self.history)

    def _draw(self, history: list[Record]) -> None:
        if not self.enabled:
            return
        from IPython.display import Image, display

        from ..curves import curves_figure

        start = time.perf_counter()
        buf = io.BytesIO()  # a PNG, not the Figure: a Figure shown is drawn again when the cell ends
        curves_figure(history, self.title, self.epochs).savefig(buf, format="png", dpi=100, bbox_inches="tight")
        image = Image(data=buf.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
        self.drawings += 1
        self._drawn_at = time.perf_counter()
        self._cost = self._drawn_at - start


def live_curves(then: Callable[[Record], None] | None, title: str = "") -> tuple[
        Callable[[Record], None] | None, Callable[[Record], None] | None]:
    """``fit``'s ``(on_point, on_epoch_end)`` for a live plot: in a notebook, the curves redrawn at each point
    and each epoch's end, then ``then`` (the user's own ``on_epoch_end``); elsewhere ``(None, then)``."""
    curves = LiveCurves(title)
    if not curves.enabled:
        return None, then

    def on_epoch_end(record: Record) -> None:
        curves(record)
        if then is not None:
            then(record)

    return curves.point, on_epoch_end
