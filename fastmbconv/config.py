"""EfficientNet architecture as data.

The B0 baseline is a list of typed :class:`StageConfig` rows. Scaled variants are produced by
:func:`scale_stages`, which applies the width and depth multipliers with the rounding rules
timm and torchvision share, so parameter counts match theirs exactly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from .geometry import PadMode

BlockType = Literal["ds", "ir"]  # depthwise-separable (stage 1), inverted residual (MBConv)


@dataclass(frozen=True)
class StageConfig:
    """One stage of EfficientNet: ``repeats`` blocks of one type.

    Only the first block of a stage uses ``stride``; the rest use stride 1.
    ``se_ratio`` is a fraction of the *block input* channels (0.25 in EfficientNet).
    """

    block: BlockType
    kernel: int
    stride: int
    expand_ratio: int
    out_channels: int
    repeats: int
    se_ratio: float = 0.25


# Tan & Le, Table 1 (the searched B0 network).
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig("ds", 3, 1, 1, 16, 1),
    StageConfig("ir", 3, 2, 6, 24, 2),
    StageConfig("ir", 5, 2, 6, 40, 2),
    StageConfig("ir", 3, 2, 6, 80, 3),
    StageConfig("ir", 5, 1, 6, 112, 3),
    StageConfig("ir", 5, 2, 6, 192, 4),
    StageConfig("ir", 3, 1, 6, 320, 1),
)
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class VariantConfig:
    """The hand-picked (width, depth, resolution, dropout) of an official variant."""

    name: str
    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


# The official table (timm, torchvision, the TF reference). B1-B7 are hand-picked, not the
# exact compound-scaling formula.
VARIANTS: dict[str, VariantConfig] = {
    v.name: v
    for v in (
        VariantConfig("b0", 1.0, 1.0, 224, 0.2),
        VariantConfig("b1", 1.0, 1.1, 240, 0.2),
        VariantConfig("b2", 1.1, 1.2, 260, 0.3),
        VariantConfig("b3", 1.2, 1.4, 300, 0.3),
        VariantConfig("b4", 1.4, 1.8, 380, 0.4),
        VariantConfig("b5", 1.6, 2.2, 456, 0.4),
        VariantConfig("b6", 1.8, 2.6, 528, 0.5),
        VariantConfig("b7", 2.0, 3.1, 600, 0.5),
    )
}

# BN eps of the two conventions: PyTorch-trained (timm ``efficientnet_*``, torchvision) and
# TF-ported (timm ``tf_efficientnet_*``).
BN_EPS: dict[PadMode, float] = {"symmetric": 1e-5, "same": 1e-3}


def torchvision_bn_eps(variant: str | None) -> float:
    """The BN eps torchvision's EfficientNet weights were trained with: 1e-3 for B5-B7 (its
    ``efficientnet_b5..b7`` build their BatchNorms so), PyTorch's 1e-5 for B0-B4 and any other scale."""
    return 1e-3 if variant in ("b5", "b6", "b7") else 1e-5


#: timm's architecture names -> (variant, padding): ``efficientnet_bN`` (symmetric padding,
#: BN eps 1e-5) and ``tf_efficientnet_bN`` (TF "SAME" padding, BN eps 1e-3).
ARCHITECTURES: dict[str, tuple[str, PadMode]] = {
    **{f"efficientnet_{v}": (v, "symmetric") for v in VARIANTS},
    **{f"tf_efficientnet_{v}": (v, "same") for v in VARIANTS},
}


def round_channels(channels: float, width_mult: float = 1.0, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width_mult`` and round to the nearest multiple of ``divisor``.

    If rounding down loses more than 10%, one more ``divisor`` is added (timm's
    ``make_divisible`` and torchvision's ``_make_divisible`` behave the same way).
    """
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float = 1.0) -> int:
    """Depth rounding: always up, so a stage never loses a block."""
    return int(math.ceil(repeats * depth_mult))


def scale_stages(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    base: Sequence[StageConfig] = B0_STAGES,
) -> tuple[StageConfig, ...]:
    """Apply width and depth multipliers to every stage of ``base``."""
    return tuple(
        replace(
            s,
            out_channels=round_channels(s.out_channels, width_mult),
            repeats=round_repeats(s.repeats, depth_mult),
        )
        for s in base
    )


@dataclass(frozen=True)
class CompoundScale:
    width_mult: float
    depth_mult: float
    resolution: int


def compound_scaling(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = 224,
) -> CompoundScale:
    """Tan & Le's compound scaling: depth ``alpha**phi``, width ``beta**phi``, resolution
    ``gamma**phi`` times the base, with resolution rounded to a multiple of 8 (other sizes waste
    compute on padding at stride-2 boundaries).

    The constraint is ``alpha * beta**2 * gamma**2 ~= 2`` so that FLOPs grow by about ``2**phi``;
    a warning is raised when the product is more than 10% away from 2.
    """
    if not math.isfinite(phi) or phi < 0:
        raise ValueError(f"compound_scaling: phi must be a finite number >= 0, got {phi}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (math.isfinite(value) and value >= 1.0):
            raise ValueError(f"compound_scaling: {name} must be >= 1, got {value}")
    if base_resolution < 1:
        raise ValueError(f"compound_scaling: base_resolution must be >= 1, got {base_resolution}")
    product = alpha * beta**2 * gamma**2
    if abs(product - 2.0) > 0.2:
        warnings.warn(
            f"compound_scaling: alpha*beta^2*gamma^2 = {product:.3f}, far from 2; FLOPs will grow "
            f"by about {product:.2f}^phi rather than 2^phi",
            stacklevel=2,
        )
    resolution = max(8, int(round(base_resolution * gamma**phi / 8)) * 8)
    return CompoundScale(width_mult=beta**phi, depth_mult=alpha**phi, resolution=resolution)
