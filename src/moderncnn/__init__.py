"""moderncnn: the networks of d2l's "Modern Convolutional Neural Networks", plus LeNet-5.

Everything the command line does is one import away::

    import moderncnn
    model = moderncnn.create_model("resnet18", num_classes=10, in_channels=1)
    print(moderncnn.summary(model, (1, 96, 96)))
    result = moderncnn.fit("lenet", recipe="book", out_dir="runs/lenet")

Each name is imported from its module on first use (PEP 562), so that ``import moderncnn`` costs nothing
until a name is used and ``moderncnn --help`` answers without importing torch (1.6 s of a 2 s start).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The public API: each name and the module it lives in.
_API = {
    "create_model": "registry", "list_models": "registry", "register_model": "registry",
    "get_model_builder": "registry",
    "summary": "inspect", "shape_walk": "inspect",
    "fit": "train", "TrainResult": "train", "Recipe": "recipes", "get_recipe": "recipes",
    "evaluate": "evaluate", "predict": "evaluate", "load_checkpoint": "checkpoint", "compare": "compare",
    "export": "export", "read_metadata": "export", "reproduce": "reproduce",
}
__all__ = list(_API)

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from .checkpoint import load_checkpoint
    from .compare import compare
    from .evaluate import evaluate, predict
    from .export import export, read_metadata
    from .inspect import shape_walk, summary
    from .recipes import Recipe, get_recipe
    from .registry import create_model, get_model_builder, list_models, register_model
    from .reproduce import reproduce
    from .train import TrainResult, fit


class _Package(types.ModuleType):
    """The package, with its API bound on first use. ``moderncnn.export``, ``.evaluate`` and ``.compare`` are
    functions named as their modules: importing such a module (which sets the package's attribute of that
    name to the module) leaves the attribute the function, as the eager ``from .export import export`` did."""

    def __getattr__(self, name: str) -> Any:
        if name in _API:
            value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        elif not name.startswith("__"):  # a submodule: moderncnn.data, moderncnn.show, ...
            try:
                value = importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError:
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if _API.get(name) == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_API))


sys.modules[__name__].__class__ = _Package
