"""Model registry: builders registered by name, created by name.

Builders are plain functions ``name(*, num_classes=..., in_channels=..., **kw)``
registered with :func:`register_model`; the function name is the model name.
The zoo's builders register when :mod:`moderncnn.models` is imported, which the
registry does the first time it is asked for a model (:func:`_zoo`).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

import torch.nn as nn

from .runschema import MAX_CLASSES

__all__ = ["register_model", "create_model", "list_models", "get_model_builder", "check_size_arg"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def _zoo() -> dict[str, Callable[..., nn.Module]]:
    """Every registered builder, the zoo's included: imported here, on first use, not by ``import moderncnn``."""
    from . import models  # noqa: F401  (each family's module registers its builders)

    return _MODELS


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; a second builder with the same name is an error."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__} and {fn.__module__})")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, e.g. ``"resnet*"``."""
    return sorted(n for n in _zoo() if fnmatch.fnmatchcase(n, pattern.lower()))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _zoo()[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), _MODELS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} ('moderncnn list' shows all {len(_MODELS)} models)") from None


_MOST = {"num_classes": MAX_CLASSES, "in_channels": 64}


def check_size_arg(name: str, value: object) -> None:
    """A one-line ValueError unless ``value`` is a positive int (``num_classes``, ``in_channels``).

    timm's ``num_classes=0`` (no classifier) is not offered: every model here ends in its classifier, and
    ``forward_head(x, pre_logits=True)`` gives the features before it.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = "; for features use forward_head(x, pre_logits=True)" if name == "num_classes" and value == 0 else ""
        raise ValueError(f"{name} must be a positive integer, got {value!r}{hint}")
    most = _MOST[name]
    if value > most:  # a classifier of 10**11 outputs is an allocation no machine serves, not a model
        raise ValueError(f"{name} must be at most {most:,}, got {value:,}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", num_classes=10, in_channels=1)``."""
    builder = get_model_builder(name)
    for key in ("num_classes", "in_channels"):
        if key in kwargs:
            check_size_arg(key, kwargs[key])
    try:
        model = builder(**kwargs)
    except TypeError as e:
        # builders pass **kwargs on to a class; a misspelt argument surfaces here
        if "unexpected keyword argument" not in str(e):
            raise
        bad = str(e).split("argument", 1)[1].strip()
        raise ValueError(
            f"{name} takes no argument {bad}; help(moderncnn.get_model_builder({name!r})) lists its arguments"
        ) from None
    model.model_name = name
    return model
