"""torch.hub entry points: one per registered moderncnn model, with the builder's docstring.

    model = torch.hub.load("path/to/moderncnn", "resnet18_book", source="local", num_classes=10)
    model = torch.hub.load("path/to/moderncnn", "lenet_bn", source="local", weights="runs/lenet_bn-book")

``weights`` takes a run directory or a ``.safetensors`` file (see ``moderncnn.hub``). The clone's own
``src/moderncnn`` is used unless moderncnn is already imported in the process.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "safetensors", "tqdm"]  # what ``import moderncnn`` needs

_SRC = str(_Path(__file__).resolve().parent / "src")
_sys.path.insert(0, _SRC)  # for a clone that is not pip-installed
try:
    from moderncnn.hub import entry_points as _entry_points
finally:
    _sys.path.remove(_SRC)

globals().update(_entry_points())
