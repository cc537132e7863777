"""Pictures of what a network learned: its filters, its feature maps, where it looks, and its mistakes.

Each ``plot_*`` function returns a matplotlib Figure (a notebook shows it inline; ``fig.savefig(path)`` writes
it); ``moderncnn show filters|activations|saliency|mistakes`` writes one as a PNG. They take a trained model
(from :func:`~moderncnn.load_checkpoint` or :func:`~moderncnn.fit`), whose ``preprocessing`` says how its
images were prepared. In a notebook, ``fit(..., plot=True)`` redraws the training curves live
(:mod:`.live`); ``moderncnn train --tensorboard`` writes the same for TensorBoard (:mod:`.board`).
"""

from .activations import plot_activations, stage_outputs
from .filters import plot_filters
from .mistakes import find_mistakes, plot_mistakes
from .saliency import METHODS, default_method, gradcam, input_gradients, plot_saliency
from .stages import conv_layers, feature_stages

__all__ = ["plot_filters", "plot_activations", "plot_saliency", "plot_mistakes", "find_mistakes", "stage_outputs",
           "gradcam", "input_gradients", "default_method", "feature_stages", "conv_layers", "METHODS"]
