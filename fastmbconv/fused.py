"""Fused inference path (placeholder until the Triton kernels land)."""
from __future__ import annotations


def _unavailable(*_args, **_kwargs):
    raise NotImplementedError("the fused Triton path is not built yet; use backend 'reference'")


forward = forward_features = forward_feature_maps = _unavailable
