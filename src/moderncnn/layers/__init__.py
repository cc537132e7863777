"""Pieces shared across families."""

from .batchnorm import BatchNorm, batch_norm
from .foldbn import bn_foldable, foldable_pairs, patch_moments, restore_folded_bn, use_folded_bn
from .lrn import LocalResponseNorm
from .patchpool import PatchAvgPool2d, patch_poolable, restore_avg_pool2d, use_patch_pool
from .rowconv import RowStackedConv2d, restore_conv2d, row_stackable, use_row_stacked

__all__ = ["BatchNorm", "batch_norm", "LocalResponseNorm", "RowStackedConv2d", "row_stackable", "use_row_stacked",
           "restore_conv2d", "PatchAvgPool2d", "patch_poolable", "use_patch_pool", "restore_avg_pool2d", "patch_moments",
           "bn_foldable", "foldable_pairs", "use_folded_bn", "restore_folded_bn"]
