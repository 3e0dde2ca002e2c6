"""The reference executor: the whole model as plain PyTorch modules (cuDNN on a GPU).

It is the ground truth the fused executor (:mod:`fastmbconv.fused`) is tested against, and the
path for training, autograd and CPU tensors. Same entry point as the fused executor:
``run(model, x, plan)``.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import ragged
from .backend import needs_autograd
from .geometry import RaggedSizes
from .plan import STEM, ForwardPlan


def stages(model, x: torch.Tensor, sizes: Optional[RaggedSizes], last: int = 1 << 30
           ) -> Iterator[tuple[int, torch.Tensor, Optional[RaggedSizes]]]:
    """Yields (stage index, output, its valid sizes): the stem's (as ``plan.STEM``), then each
    stage's end, up to stage ``last``."""
    x = F.silu(model.bn1(model.conv_stem(x, sizes)))
    sizes = None if sizes is None else sizes.after(3, 2)
    yield STEM, x, sizes
    for i, stage in enumerate(model.blocks):
        if i > last:
            return
        for block in stage:
            if model.grad_checkpointing and needs_autograd(block, x):
                # Activations recomputed in the backward pass (EfficientNet.set_grad_checkpointing).
                x = checkpoint(block, x, sizes, use_reentrant=False)
            else:
                x = block(x, sizes)
            if sizes is not None:
                sizes = sizes.after(block.kernel, block.stride)
        yield i, x, sizes


def _masked(x: torch.Tensor, sizes: Optional[RaggedSizes]) -> torch.Tensor:
    return x if sizes is None else ragged.mask_invalid(x, sizes)


def head(model, features: torch.Tensor, sizes: Optional[RaggedSizes] = None, pre_logits: bool = False) -> torch.Tensor:
    """``model.global_pool`` over each image's valid region (``avg``, ``max``; ``""`` keeps the
    map and skips the classifier), dropout, classifier."""
    if model.global_pool == "":
        x = _masked(features, sizes)
        return F.dropout(x, p=model.drop_rate, training=model.training) if model.drop_rate > 0.0 else x
    if model.global_pool == "max":
        if sizes is not None:
            features = features.masked_fill(~sizes.mask(features.shape[-2], features.shape[-1], features.device),
                                            float("-inf"))
        x = features.amax((2, 3))
    else:
        x = features.mean((2, 3)) if sizes is None else sizes.masked_mean(features).flatten(1)
    if model.drop_rate > 0.0:
        x = F.dropout(x, p=model.drop_rate, training=model.training)
    return x if pre_logits else model.classifier(x)


def run(model, x: torch.Tensor, plan: ForwardPlan):
    maps = []
    for i, x, sizes in stages(model, x, plan.sizes, plan.last_stage):
        if i in plan.stages:
            maps.append(_masked(x, sizes))
    if plan.output == "stage_maps":
        return maps
    if model.has_head_conv:
        features = F.silu(model.bn2(model.conv_head(x)))
    elif plan.output != "intermediates":  # features_only never gets here (make_plan: stage_maps)
        # pruned to nn.Identity: timm's forward still calls them, so hooks placed on them fire
        features = model.bn2(model.conv_head(x))
    else:
        features = x
    if plan.output == "intermediates":
        return _masked(features, sizes), maps
    return _masked(features, sizes) if plan.output == "features" else head(model, features, sizes)
