"""moderncnn: the networks of d2l's "Modern Convolutional Neural Networks", plus LeNet-5."""

from . import models as _models  # noqa: F401  (fills the registry)
from .inspect import shape_walk, summary
from .registry import create_model, get_model_builder, list_models, register_model

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "register_model", "get_model_builder", "summary", "shape_walk"]
