"""The fused executor: the whole eval-mode forward on the Triton kernels of :mod:`fastmbconv.kernels`.

Per MBConv block, four launches; the expanded tensor (the block's largest) is written by the
expand conv, read and rewritten once by the depthwise kernel, and read once by the project
conv, where eager PyTorch makes a separate pass for every BN, activation, pool and gate:

1. expand 1x1 with BN folded into the weights and an fp32 bias, written *before* SiLU
   (``pointwise_gated``, no gate);
2. depthwise kxk + BN + SiLU, applying the expand's SiLU as it loads, and summing the output per
   (sample, channel) for SE (``dwconv_bn_act`` with the pool epilogue);
3. the SE gate from those sums (``squeeze_excite_gate``, one tiny launch);
4. project 1x1 with the gate in its prologue and folded BN bias and the residual in its epilogue.

The stem is a torch conv with folded BN whose SiLU is likewise left to the first depthwise
kernel; the head conv + BN + SiLU + global average pool is one ``pointwise_gated`` launch that
writes only (N, C) sums. Activations are channels_last in the plan's compute dtype (the autocast dtype under
autocast); kernels accumulate in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import ragged
from ..geometry import PadMode, RaggedSizes
from ..kernels._launch import layer_scope
from ..kernels.dwconv_bn_act import dwconv_bn_act
from ..kernels.pointwise_gated import choose_pointwise_impl, pointwise_gated
from ..kernels.squeeze_excite import squeeze_excite_gate
from ..plan import ForwardPlan
from ..shapes import walk
from .fold import FoldedBlock, FoldedModel, folded


def block_forward(block: FoldedBlock, x: torch.Tensor, padding: tuple[int, int, int, int], pad_mode: PadMode,
                  input_preact: bool = False, sizes: Optional[RaggedSizes] = None) -> torch.Tensor:
    """One fused block on a channels_last activation. ``padding``: the depthwise conv's (top,
    bottom, left, right) for this input size (see :func:`fastmbconv.shapes.walk`).
    ``input_preact``: ``x`` is a pre-SiLU tensor (the stem's), whose SiLU the first kernel
    applies on load. ``sizes``: the per-image valid sizes of a ragged batch at this block's
    input, each image padded by its own offsets in ``pad_mode``."""
    if input_preact and (block.has_skip or block.w_expand is not None):
        x, input_preact = F.silu(x), False  # the activated tensor is needed in full
    if block.w_expand is not None:
        h = pointwise_gated(x, block.w_expand, block.b_expand, act="identity")
        input_act = "silu"
    else:
        h, input_act = x, ("silu" if input_preact else "identity")
    k, s = block.kernel, block.stride
    valid_hw = pad_tl = count = None
    if sizes is not None:
        valid_hw, pad_tl = sizes.on(x.device), sizes.on(x.device, "padding", k, s, pad_mode)
        count = sizes.after(k, s).on(x.device, "counts")
    d, pool = dwconv_bn_act(h, block.w_dw, block.dw_scale, block.dw_shift, padding, s, act="silu",
                            input_act=input_act, with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl)
    gate = squeeze_excite_gate(pool, block.se_w_reduce, block.se_b_reduce, block.se_w_expand, block.se_b_expand,
                               count=count, hw=d.shape[-2] * d.shape[-1])
    return pointwise_gated(d, block.w_project, block.b_project, gate=gate, residual=x if block.has_skip else None)


def stem_forward(weights: FoldedModel, x: torch.Tensor, padding: tuple[int, int, int, int], pad_mode: PadMode,
                 sizes: Optional[RaggedSizes]) -> torch.Tensor:
    """Stem conv with BN folded, *before* SiLU (the first block applies it)."""
    x = x.to(weights.stem_weight.dtype).contiguous(memory_format=torch.channels_last)
    if sizes is not None:
        return ragged.conv2d(x, weights.stem_weight, weights.stem_bias, 2, 1, pad_mode, sizes)
    top, bottom, left, right = padding
    if top == bottom == left == right:
        return F.conv2d(x, weights.stem_weight, weights.stem_bias, stride=2, padding=top)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weights.stem_weight, weights.stem_bias, stride=2)


def _masked(x: torch.Tensor, sizes: Optional[RaggedSizes]) -> torch.Tensor:
    return x if sizes is None else ragged.mask_invalid(x, sizes)


def run(model, x: torch.Tensor, plan: ForwardPlan):
    """The fused forward of ``model`` per ``plan`` (see :mod:`fastmbconv.plan`)."""
    weights = folded(model, plan.dtype)
    layers = walk(model, x.shape[-2], x.shape[-1])
    sizes = plan.sizes
    with layer_scope("conv_stem"):
        x = stem_forward(weights, x, layers[0].padding, plan.pad_mode, sizes)
    sizes = None if sizes is None else sizes.after(3, 2)
    stage_maps = []
    blocks = [layer for layer in layers if layer.kind == "block"]
    for layer in blocks:
        with layer_scope(layer.name):
            x = block_forward(weights.stages[layer.stage][layer.index], x, layer.padding, plan.pad_mode,
                              input_preact=layer is blocks[0], sizes=sizes)
        if sizes is not None:
            sizes = sizes.after(layer.kernel, layer.stride)
        if layer.index == len(weights.stages[layer.stage]) - 1 and layer.stage in plan.stages:
            stage_maps.append(_masked(x, sizes))
    if plan.output == "stage_maps":
        return stage_maps
    with layer_scope("conv_head"):
        if plan.output == "features":
            return _masked(pointwise_gated(x, weights.head_weight, weights.head_bias, act="silu"), sizes)
        # conv + BN + SiLU + global average pool in one launch that never writes the head map
        sums = pointwise_gated(x, weights.head_weight, weights.head_bias, act="silu", pool_only=True,
                               valid_hw=None if sizes is None else sizes.on(x.device))
    count = float(x.shape[-2] * x.shape[-1]) if sizes is None else sizes.on(x.device, "counts")[:, None]
    return model.classifier((sums / count).to(weights.head_weight.dtype))


def pointwise_choices(model, batch: int, height: int, width: int, dtype=None, device=None) -> list[dict]:
    """Which implementation (``"triton"`` or ``"torch"``) each 1x1 conv of the fused forward
    would use for an input of this size: one row per conv with its name, GEMM shape (M pixels,
    K in, N out) and choice, from :func:`fastmbconv.kernels.pointwise_gated.choose_pointwise_impl`.
    For benchmark reports; nothing is launched."""
    weight = model.conv_stem.weight
    dtype = dtype or weight.dtype
    device = torch.device(device) if device is not None else weight.device
    rows = []

    def add(name, pixels, k, n, pool_only=False):
        m = batch * pixels
        rows.append({"layer": name, "M": m, "K": k, "N": n, "pool_only": pool_only,
                     "impl": choose_pointwise_impl(m, k, n, dtype, device, pool_only)})

    for layer in walk(model, height, width):
        if layer.kind == "block":
            if layer.has_expand:
                add(f"{layer.name}.{layer.parts.expand.conv_name}", layer.height * layer.width,
                    layer.in_channels, layer.mid_channels)
            add(f"{layer.name}.{layer.parts.project.conv_name}", layer.out_height * layer.out_width,
                layer.mid_channels, layer.out_channels)
        elif layer.kind == "head":
            add(layer.name, layer.height * layer.width, layer.in_channels, layer.out_channels, pool_only=True)
    return rows

