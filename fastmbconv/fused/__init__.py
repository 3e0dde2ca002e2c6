"""The fused executor: eval-mode inference on the Triton kernels, BN folded once and cached.

Same entry point as :mod:`fastmbconv.reference`: ``run(model, x, plan)``. Folding lives in
:mod:`.fold`, execution in :mod:`.execute`. Importing this package imports triton.
"""
from .execute import block_forward, pointwise_choices, run
from .fold import FoldCache, FoldedBlock, FoldedModel, bn_scale_shift, fold_block, fold_model, folded, refold

__all__ = [
    "FoldCache", "FoldedBlock", "FoldedModel", "block_forward", "bn_scale_shift", "fold_block",
    "fold_model", "folded", "pointwise_choices", "refold", "run"
]
