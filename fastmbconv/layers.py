"""Reference (pure PyTorch) layers of EfficientNet.

Parameter and buffer names follow timm's ``_efficientnet_blocks`` so that a timm state_dict
loads with ``strict=True``. These modules are the ground truth that every fused kernel is
tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ragged
from .geometry import PadMode, RaggedSizes, check_pad_mode, conv_padding


class PaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose padding follows ``pad_mode``.

    ``symmetric`` pads ``kernel // 2`` on every side (timm ``efficientnet_*``, torchvision).
    ``same`` computes TF "SAME" padding from the input it is given, which is asymmetric for
    stride 2 (timm ``tf_efficientnet_*``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        pad_mode: PadMode = "symmetric",
    ):
        check_pad_mode(pad_mode)
        # Static padding where both conventions agree (stride 1, odd kernel) keeps cuDNN's fast path.
        static = pad_mode == "symmetric" or (stride == 1 and kernel_size % 2 == 1)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if static else 0,
            groups=groups,
            bias=bias,
        )
        self.pad_mode = pad_mode
        self.dynamic_pad = not static

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        return conv_padding(height, width, self.kernel_size[0], self.stride[0], self.pad_mode)

    def forward(self, x: torch.Tensor, sizes: Optional[RaggedSizes] = None) -> torch.Tensor:
        """``sizes``: per-image valid sizes of a ragged batch (see :mod:`fastmbconv.ragged`)."""
        if sizes is not None:
            return ragged.conv2d(x, self.weight, self.bias, self.stride[0], self.groups, self.pad_mode, sizes)
        if self.dynamic_pad:
            top, bottom, left, right = self.padding_for(x.shape[-2], x.shape[-1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad_mode={self.pad_mode}"


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 reduce + SiLU -> 1x1 expand + sigmoid -> scale the input."""

    def __init__(self, channels: int, reduced_channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced_channels, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced_channels, channels, 1, bias=True)

    def gate(self, x: torch.Tensor, sizes: Optional[RaggedSizes] = None) -> torch.Tensor:
        pooled = x.mean((2, 3), keepdim=True) if sizes is None else sizes.masked_mean(x)
        return torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(pooled))))

    def forward(self, x: torch.Tensor, sizes: Optional[RaggedSizes] = None) -> torch.Tensor:
        return x * self.gate(x, sizes)


def se_channels(in_channels: int, se_ratio: float) -> int:
    """SE width: a fraction of the block *input* channels (timm, torchvision: in // 4)."""
    return max(1, int(round(in_channels * se_ratio)))


@dataclass(frozen=True)
class ConvBN:
    """A conv and the BatchNorm after it, with their attribute names (timm's)."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    conv_name: str
    bn_name: str


@dataclass(frozen=True)
class BlockParts:
    """The parts of an MBConv or DepthwiseSeparable block, in execution order. ``expand`` is
    None for DepthwiseSeparable. Folding, the roofline and the layer walk read blocks through
    this, never by guessing attribute names."""

    expand: Optional[ConvBN]
    depthwise: ConvBN
    se: "SqueezeExcite"
    project: ConvBN
    kernel: int
    stride: int
    has_skip: bool

    @property
    def mid_channels(self) -> int:
        return self.depthwise.conv.out_channels


class _Block(nn.Module):
    """Shared construction of the two block kinds: [expand 1x1 + BN + SiLU], depthwise kxk + BN
    + SiLU, SE, project 1x1 + BN, residual (with stochastic depth) when stride is 1 and the
    channel count is kept. ``PART_NAMES`` gives timm's attribute name of each (conv, BN)."""

    PART_NAMES: dict = {}

    def __init__(self, in_channels, out_channels, kernel, stride, expand_ratio, se_ratio, pad_mode, bn_eps,
                 drop_path):
        super().__init__()
        mid = in_channels * expand_ratio
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel, self.stride = kernel, stride
        layers = {"expand": (in_channels, mid, 1, 1, 1), "depthwise": (mid, mid, kernel, stride, mid),
                  "project": (mid, out_channels, 1, 1, 1)}
        for part, (conv_name, bn_name) in self.PART_NAMES.items():
            cin, cout, k, s, groups = layers[part]
            conv = (PaddedConv2d(cin, cout, k, s, groups=groups, pad_mode=pad_mode) if k > 1
                    else nn.Conv2d(cin, cout, 1, bias=False))
            setattr(self, conv_name, conv)
            setattr(self, bn_name, nn.BatchNorm2d(cout, eps=bn_eps))
            if part == "depthwise":
                self.se = SqueezeExcite(mid, se_channels(in_channels, se_ratio))
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path)

    def parts(self) -> BlockParts:
        get = {part: ConvBN(getattr(self, c), getattr(self, b), c, b) for part, (c, b) in self.PART_NAMES.items()}
        return BlockParts(get.get("expand"), get["depthwise"], self.se, get["project"], self.kernel, self.stride,
                          self.has_skip)

    def forward(self, x: torch.Tensor, sizes: Optional[RaggedSizes] = None) -> torch.Tensor:
        """``sizes``: per-image valid sizes of a ragged batch (see :mod:`fastmbconv.ragged`)."""
        p = self.parts()
        shortcut = x
        if p.expand is not None:
            x = F.silu(p.expand.bn(p.expand.conv(x)))
        x = F.silu(p.depthwise.bn(p.depthwise.conv(x, sizes)))
        x = self.se(x, None if sizes is None else sizes.after(self.kernel, self.stride))
        x = p.project.bn(p.project.conv(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class DepthwiseSeparable(_Block):
    """Stage-1 block: depthwise kxk + BN + SiLU, SE, 1x1 project + BN, residual if shapes match."""

    PART_NAMES = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, se_ratio: float,
                 pad_mode: PadMode, bn_eps: float, drop_path: float = 0.0):
        super().__init__(in_channels, out_channels, kernel, stride, 1, se_ratio, pad_mode, bn_eps, drop_path)


class MBConv(_Block):
    """Inverted residual: 1x1 expand + BN + SiLU, depthwise kxk + BN + SiLU, SE, 1x1 project +
    BN, residual (with stochastic depth) when stride is 1 and channels match."""

    PART_NAMES = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")}

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int,
                 se_ratio: float, pad_mode: PadMode, bn_eps: float, drop_path: float = 0.0):
        super().__init__(in_channels, out_channels, kernel, stride, expand_ratio, se_ratio, pad_mode, bn_eps,
                         drop_path)


def init_weights(module: nn.Module) -> None:
    """timm/TF-style init: fan-out normal for convs, uniform for the classifier."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
