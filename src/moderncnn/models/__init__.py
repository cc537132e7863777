"""One module per architecture family; importing this package registers every builder."""

from . import alexnet, densenet, fastnet, googlenet, lenet, nin, resnet, vgg  # noqa: F401  (registers the builders)
from ._base import ModelBase, SequentialModel

__all__ = ["ModelBase", "SequentialModel"]
