"""Building EfficientNets: at any scale (:func:`efficientnet`), the official B0-B7
(:func:`efficientnet_b0` ... :func:`efficientnet_b7`), and by name (:func:`resolve_model_name`,
:data:`MODEL_BUILDERS`)."""
from __future__ import annotations

import functools

import torch

from .config import B0_HEAD_CHANNELS, B0_STEM_CHANNELS, VARIANTS, compound_scaling, round_channels, scale_stages
from .geometry import PadMode
from .model import EfficientNet


def efficientnet(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    resolution: int = 224,
    dropout: float = 0.2,
    *,
    phi: float | None = None,
    num_classes: int = 1000,
    pad_mode: PadMode = "symmetric",
    **kwargs,
) -> EfficientNet:
    """Build an EfficientNet at any scale.

    Give ``width_mult``/``depth_mult``/``resolution`` directly, or ``phi`` to take them from
    :func:`fastmbconv.compound_scaling` (the exact formula, not the hand-picked B1-B7).
    Further keyword arguments go to :class:`EfficientNet`.
    """
    if phi is not None:
        scale = compound_scaling(phi)
        width_mult, depth_mult, resolution = scale.width_mult, scale.depth_mult, scale.resolution
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError(f"width_mult and depth_mult must be > 0, got {width_mult}, {depth_mult}")
    return EfficientNet(
        stages=scale_stages(width_mult, depth_mult),
        stem_channels=round_channels(B0_STEM_CHANNELS, width_mult),
        head_channels=round_channels(B0_HEAD_CHANNELS, width_mult),
        num_classes=num_classes,
        drop_rate=kwargs.pop("drop_rate", dropout),
        pad_mode=pad_mode,
        default_resolution=resolution,
        **kwargs,
    )


def _variant_builder(name: str):
    cfg = VARIANTS[name]

    def build(**kwargs) -> EfficientNet:
        model = efficientnet(cfg.width_mult, cfg.depth_mult, cfg.resolution, cfg.dropout, **kwargs)
        model.variant = f"efficientnet_{name}"
        return model

    build.__name__ = build.__qualname__ = f"efficientnet_{name}"
    build.__doc__ = (
        f"EfficientNet-{name.upper()}: width {cfg.width_mult}, depth {cfg.depth_mult}, "
        f"resolution {cfg.resolution}, dropout {cfg.dropout}. Keyword arguments go to "
        "EfficientNet (num_classes, pad_mode='same' for TF weights, drop_path_rate, "
        "features_only, ...)."
    )
    return build


efficientnet_b0 = _variant_builder("b0")
efficientnet_b1 = _variant_builder("b1")
efficientnet_b2 = _variant_builder("b2")
efficientnet_b3 = _variant_builder("b3")
efficientnet_b4 = _variant_builder("b4")
efficientnet_b5 = _variant_builder("b5")
efficientnet_b6 = _variant_builder("b6")
efficientnet_b7 = _variant_builder("b7")

MODEL_BUILDERS = {f"efficientnet_{n}": globals()[f"efficientnet_{n}"] for n in VARIANTS}


def resolve_model_name(name: str) -> str:
    """The builder name for ``name``: ``"efficientnet_b0"`` or the short ``"b0"``."""
    key = str(name)
    if key not in MODEL_BUILDERS:
        key = f"efficientnet_{key}"
    if key not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_BUILDERS)}")
    return key


@functools.lru_cache(maxsize=None)
def model_structure(name: str) -> EfficientNet:
    """The named model on the ``meta`` device: its structure only (no memory, no init cost),
    cached. For the layer walk and the roofline; never run it."""
    with torch.device("meta"):
        return MODEL_BUILDERS[resolve_model_name(name)]()
