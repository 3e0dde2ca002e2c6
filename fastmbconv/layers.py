"""Reference (pure PyTorch) layers of EfficientNet.

Parameter and buffer names follow timm's ``_efficientnet_blocks`` so that a timm state_dict
loads with ``strict=True``. These modules are the ground truth that every fused kernel is
tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import PadMode


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding for one spatial dim: (before, after).

    ``pad_total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``,
    with the odd pixel going after (bottom/right). It depends on the actual input size, so it is
    computed on every call rather than from a fixed image size.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv_padding(
    height: int, width: int, kernel: int, stride: int, pad_mode: PadMode
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding for a ``kernel``x``kernel`` conv in either convention."""
    if pad_mode == "symmetric":
        p = kernel // 2
        return p, p, p, p
    if pad_mode == "same":
        top, bottom = same_padding(height, kernel, stride)
        left, right = same_padding(width, kernel, stride)
        return top, bottom, left, right
    raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'symmetric' or 'same'")


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
        if pad_mode not in ("symmetric", "same"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'symmetric' or 'same'")
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

    def forward(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        if valid_hw is not None:
            from . import ragged

            return ragged.conv2d(
                x, self.weight, self.bias, self.stride[0], self.groups, self.pad_mode, valid_hw
            )
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

    def gate(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        if valid_hw is None:
            pooled = x.mean((2, 3), keepdim=True)
        else:
            from . import ragged

            pooled = ragged.masked_mean(x, valid_hw)
        return torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(pooled))))

    def forward(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.gate(x, valid_hw)


def _out_valid(valid_hw: torch.Tensor, stride: int) -> torch.Tensor:
    from . import ragged

    return ragged.out_valid(valid_hw, stride)


def se_channels(in_channels: int, se_ratio: float) -> int:
    """SE width: a fraction of the block *input* channels (timm, torchvision: in // 4)."""
    return max(1, int(round(in_channels * se_ratio)))


class DepthwiseSeparable(nn.Module):
    """Stage-1 block: depthwise kxk + BN + SiLU, SE, 1x1 project + BN, residual if shapes match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        se_ratio: float,
        pad_mode: PadMode,
        bn_eps: float,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.stride = kernel, stride
        self.conv_dw = PaddedConv2d(
            in_channels, in_channels, kernel, stride, groups=in_channels, pad_mode=pad_mode
        )
        self.bn1 = nn.BatchNorm2d(in_channels, eps=bn_eps)
        self.se = SqueezeExcite(in_channels, se_channels(in_channels, se_ratio))
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        """``valid_hw``: per-image valid (h, w) of a ragged batch (see fastmbconv.ragged)."""
        shortcut = x
        x = F.silu(self.bn1(self.conv_dw(x, valid_hw)))
        x = self.se(x, None if valid_hw is None else _out_valid(valid_hw, self.stride))
        x = self.bn2(self.conv_pw(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + BN + SiLU, depthwise kxk + BN + SiLU, SE,
    1x1 project + BN, residual (with stochastic depth) when stride is 1 and channels match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float,
        pad_mode: PadMode,
        bn_eps: float,
        drop_path: float = 0.0,
    ):
        super().__init__()
        mid = in_channels * expand_ratio
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel, self.stride = kernel, stride
        self.conv_pw = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.conv_dw = PaddedConv2d(mid, mid, kernel, stride, groups=mid, pad_mode=pad_mode)
        self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps)
        self.se = SqueezeExcite(mid, se_channels(in_channels, se_ratio))
        self.conv_pwl = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> torch.Tensor:
        """``valid_hw``: per-image valid (h, w) of a ragged batch (see fastmbconv.ragged)."""
        shortcut = x
        x = F.silu(self.bn1(self.conv_pw(x)))
        x = F.silu(self.bn2(self.conv_dw(x, valid_hw)))
        x = self.se(x, None if valid_hw is None else _out_valid(valid_hw, self.stride))
        x = self.bn3(self.conv_pwl(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


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
