"""Pictures as files: matplotlib figures drawn off-screen and written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .storage import atomic_write

__all__ = ["new_figure", "save_figure"]


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
