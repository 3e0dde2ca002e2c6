"""The layer walk: every layer of an EfficientNet with the shapes it sees at a given input size.

One walk serves the fused forward (padding and launch geometry per layer), the roofline (bytes
and FLOPs per layer), the per-layer 1x1 choices and the kernel benchmarks' cases. It reads the
model's structure only (a model on the ``meta`` device will do) and computes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .geometry import conv_padding, out_size
from .layers import BlockParts

LayerKind = Literal["stem", "block", "head"]


@dataclass(frozen=True)
class LayerShape:
    """One layer at one input size (per image; the batch is the caller's).

    For a block, ``mid_channels`` is the expanded width (``in_channels`` without expansion) and
    ``se_channels`` the SE width; ``stage``/``index`` place it in ``model.blocks``. The stem is a
    3x3 stride-2 conv, the head a 1x1 conv; they have no mid or SE width.
    """

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    height: int  # input
    width: int
    mid_channels: int = 0
    se_channels: int = 0
    has_expand: bool = False
    has_skip: bool = False
    stage: int = -1
    index: int = -1
    parts: Optional[BlockParts] = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right) in the model's convention

    @property
    def out_height(self) -> int:
        return out_size(self.height, self.stride)

    @property
    def out_width(self) -> int:
        return out_size(self.width, self.stride)


def walk(model, height: int, width: int) -> list[LayerShape]:
    """Stem, every block, and the head conv (where the model has one) of ``model`` for an input of
    ``height`` x ``width``."""
    stem, pad_mode = model.conv_stem, model.pad_mode
    layers = [LayerShape("conv_stem", "stem", stem.in_channels, stem.out_channels, 3, 2, height, width,
                         padding=conv_padding(height, width, 3, 2, pad_mode))]
    h, w = layers[0].out_height, layers[0].out_width
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            p = block.parts()
            shape = LayerShape(
                f"blocks.{i}.{j}", "block", block.in_channels, block.out_channels, p.kernel, p.stride, h, w,
                mid_channels=p.mid_channels, se_channels=p.se.conv_reduce.out_channels,
                has_expand=p.expand is not None, has_skip=p.has_skip, stage=i, index=j, parts=p,
                padding=conv_padding(h, w, p.kernel, p.stride, pad_mode))
            layers.append(shape)
            h, w = shape.out_height, shape.out_width
    if model.has_head_conv:
        head = model.conv_head
        layers.append(LayerShape("conv_head", "head", head.in_channels, head.out_channels, 1, 1, h, w))
    return layers


def block_shapes(model, height: int, width: int) -> list[LayerShape]:
    """The blocks of :func:`walk` alone."""
    return [layer for layer in walk(model, height, width) if layer.kind == "block"]
