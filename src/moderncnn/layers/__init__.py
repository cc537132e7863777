"""Pieces shared across families, and the speed layers (the same numbers, computed another way)."""

from .batchnorm import BatchNorm, batch_norm
from .foldbn import bn_foldable, foldable_pairs, patch_moments, use_folded_bn
from .lrn import LocalResponseNorm
from .patchpool import PatchAvgPool2d, patch_poolable, use_patch_pool
from .rowconv import RowStackedConv2d, row_stackable, use_row_stacked
from .swap import ModuleSwaps

__all__ = ["BatchNorm", "batch_norm", "LocalResponseNorm", "ModuleSwaps", "RowStackedConv2d", "row_stackable",
           "use_row_stacked", "PatchAvgPool2d", "patch_poolable", "use_patch_pool", "patch_moments", "bn_foldable",
           "foldable_pairs", "use_folded_bn"]
