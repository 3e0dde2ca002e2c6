"""Shared test helpers."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so BN bugs (eps, folding) cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def import_or_skip(name: str):
    """Import an optional peer library, or skip with the real import error as the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # torchvision's compiled ops fail to load on CPU-only machines
        pytest.skip(f"{name} does not import here: {type(exc).__name__}: {exc}"[:300])
