"""torch.hub's entry points: one per registered model, each taking ``weights=`` (a run directory or a
``.safetensors`` file). The repository's ``hubconf.py`` only publishes :func:`entry_points`.

    model = torch.hub.load("path/to/moderncnn", "resnet18_book", source="local", num_classes=10)
    model = torch.hub.load("path/to/moderncnn", "lenet_bn", source="local", weights="runs/lenet_bn-book")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

__all__ = ["load_model", "entry_points"]

_WEIGHTS_DOC = """

    torch.hub: ``weights`` is a run directory written by ``moderncnn train`` (the model is rebuilt as it was
    trained, with its ``preprocessing``; keyword arguments must agree with the run's) or a ``.safetensors``
    file of this model's state dict (built with the keyword arguments given). With weights the model comes
    back in eval mode, without them freshly initialised in training mode, as ``moderncnn.create_model``.
"""


def load_model(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """``create_model(name, **kwargs)``, with ``weights`` (a run directory or a ``.safetensors`` file) loaded."""
    from .checkpoint import load_checkpoint
    from .registry import create_model
    from .storage import load_weights

    if weights is None:
        return create_model(name, **kwargs)
    path = Path(weights)
    if path.is_dir():
        model, meta = load_checkpoint(path)
        if meta["model"] != name:
            raise ValueError(f"{path} is a run of {meta['model']}, not {name}: load it as {meta['model']!r}")
        trained = meta.get("model_kwargs") or {}
        for key, value in kwargs.items():
            if trained.get(key, getattr(model, key, None)) != value:
                raise ValueError(f"{path} was trained with {key}={trained.get(key, getattr(model, key, None))!r}, "
                                 f"not {value!r}: leave {key} out to load it as it was trained")
        return model
    if path.suffix != ".safetensors":
        raise ValueError(f"weights must be a run directory or a .safetensors file, got {weights}")
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    model = create_model(name, **kwargs)
    load_weights(path, model)
    return model.eval()


def _entry_point(name: str) -> Callable[..., nn.Module]:
    from .registry import get_model_builder

    def entry(*, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
        return load_model(name, weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (get_model_builder(name).__doc__ or name).rstrip() + _WEIGHTS_DOC
    return entry


def entry_points() -> dict[str, Callable[..., nn.Module]]:
    """``{model name: entry point}`` for every registered model."""
    from .registry import list_models

    return {name: _entry_point(name) for name in list_models()}
