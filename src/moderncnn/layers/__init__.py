"""Pieces shared across families."""

from .batchnorm import BatchNorm, batch_norm
from .lrn import LocalResponseNorm
from .rowconv import RowStackedConv2d, restore_conv2d, row_stackable, use_row_stacked

__all__ = ["BatchNorm", "batch_norm", "LocalResponseNorm", "RowStackedConv2d", "row_stackable", "use_row_stacked",
           "restore_conv2d"]
