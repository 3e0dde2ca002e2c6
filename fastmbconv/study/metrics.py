"""Per-case numbers beside the timing: FLOPs, analytic bytes per fusion level, TFLOP/s, GB/s and
the fraction of each memory floor reached."""
from __future__ import annotations

import math

import torch

from .. import roofline as rl
from ..builders import MODEL_BUILDERS
from .bandwidth import Bandwidth, floor_fraction
from .providers import RESNET, full_model_name


_ROOF_CACHE: dict = {}


def roof_for(model: str, resolution: int, batch: int, dtype: str):
    """The analytic roofline (None for ResNet-50, whose fusion levels are not modelled)."""
    model = full_model_name(model)
    if model == RESNET:
        return None
    key = (model, resolution, batch, dtype)
    if key not in _ROOF_CACHE:
        _ROOF_CACHE[key] = rl.roofline(model, resolution, batch, dtype)
    return _ROOF_CACHE[key]


_FLOP_CACHE: dict = {}


def flops_for(model: str, resolution: int, batch: int) -> int:
    """FLOPs of one call, counted by ``fastmbconv.count_flops`` on the reference model."""
    from ..flops import count_flops

    model = full_model_name(model)
    key = (model, resolution)
    if key not in _FLOP_CACHE:
        with torch.device("meta"):
            if model == RESNET:
                from ..resnet import resnet50

                net = resnet50()
            else:
                net = MODEL_BUILDERS[model]()
        _FLOP_CACHE[key] = count_flops(net, resolution, batch=1)
    return _FLOP_CACHE[key] * batch


def metrics(model: str, resolution: int, batch: int, dtype: str, seconds: float,
            bandwidth: Bandwidth | None) -> dict:
    """FLOPs, bytes per fusion level, TFLOP/s, GB/s and fraction of each memory floor."""
    flops = flops_for(model, resolution, batch)
    d = {"flops": flops, "gflops_per_image": flops / batch / 1e9,
         "tflops": flops / seconds / 1e12 if seconds > 0 else math.nan,
         "images_per_s": batch / seconds if seconds > 0 else math.nan}
    roof = roof_for(model, resolution, batch, dtype)
    for level in rl.LEVELS:
        nb = roof.bytes(level) if roof else None
        d[f"bytes_{level}"] = nb
        d[f"mb_per_image_{level}"] = nb / batch / 1e6 if nb else None
        d[f"gb_s_{level}"] = nb / seconds / 1e9 if nb and seconds > 0 else None
        d[f"floor_fraction_{level}"] = (
            floor_fraction(seconds, nb, bandwidth) if nb and bandwidth is not None else None)
    if bandwidth is not None:
        d["bandwidth_gb_s"] = bandwidth.gb_s
        d["bandwidth_kind"] = bandwidth.kind
    return d
