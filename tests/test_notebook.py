"""examples/tour.ipynb executes top to bottom (offline, on the CPU, in about a minute) and is kept stripped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOUR = Path(__file__).resolve().parent.parent / "examples" / "tour.ipynb"


def test_the_tour_is_kept_without_outputs():
    nb = json.loads(TOUR.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("nbclient", "nbformat", "ipykernel")),
                    reason="executing the notebook needs nbclient, nbformat and ipykernel: pip install -e '.[test]'")
def test_the_tour_runs_top_to_bottom_and_draws_every_picture(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(TOUR, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    pictures = [c for c in nb.cells if c.cell_type == "code" and any(
        "image/png" in o.get("data", {}) for o in c.outputs)]
    calls = ("plot=True", "confusion_figure", "plot_filters(model)", "initial_model", "plot_activations", "hirescam",
             "gradients", "plot_mistakes")
    for call in calls:
        assert any(call in c.source for c in pictures), f"the cell with {call} drew no picture"
    live = next(c for c in nb.cells if c.cell_type == "code" and "plot=True" in c.source)
    assert sum("image/png" in o.get("data", {}) for o in live.outputs) == 1, "the live curves must redraw in place"
    assert (tmp_path / "runs" / "tour" / "curves.png").is_file()
