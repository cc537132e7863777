"""Pieces shared across families."""

from .batchnorm import BatchNorm, batch_norm
from .lrn import LocalResponseNorm

__all__ = ["BatchNorm", "batch_norm", "LocalResponseNorm"]
