"""Pieces shared across families."""

from .batchnorm import BatchNorm, batch_norm

__all__ = ["BatchNorm", "batch_norm"]
