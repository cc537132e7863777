"""moderncnn: the networks of d2l's "Modern Convolutional Neural Networks", plus LeNet-5.

Everything the command line does is one import away::

    import moderncnn
    model = moderncnn.create_model("resnet18", num_classes=10, in_channels=1)
    print(moderncnn.summary(model, (1, 96, 96)))
    result = moderncnn.fit("lenet", recipe="book", out_dir="runs/lenet")
"""

from . import models as _models  # noqa: F401  (fills the registry)
from .checkpoint import load_checkpoint
from .compare import compare
from .evaluate import evaluate, predict
from .export import export, read_metadata
from .inspect import shape_walk, summary
from .recipes import Recipe, get_recipe
from .registry import create_model, get_model_builder, list_models, register_model
from .train import TrainResult, fit

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "register_model", "get_model_builder",
    "summary", "shape_walk",
    "fit", "TrainResult", "Recipe", "get_recipe",
    "evaluate", "predict", "load_checkpoint", "compare", "export", "read_metadata",
]
