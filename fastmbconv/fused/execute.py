"""The fused executor: the whole eval-mode forward on the Triton kernels of :mod:`fastmbconv.kernels`.

One launch for the stem (conv + folded BN + SiLU, reading the image in any layout and dtype),
four per MBConv block, three for the head. Per block, the expanded tensor (the block's largest)
is written once by the expand conv, read once by the depthwise kernel, and its depthwise output
read once by the project conv, where eager PyTorch makes a separate pass for every BN,
activation, pool and gate:

1. expand 1x1 with BN folded into the weights, an fp32 bias and SiLU (``pointwise_gated``);
2. depthwise kxk + BN + SiLU, writing per-tile sums of its output for SE (``dwconv_bn_act``);
3. the SE gate from those sums (``squeeze_excite_gate``, one small launch);
4. project 1x1 with the gate in its prologue and folded BN bias and the residual in its epilogue.

The head conv + BN + SiLU + global average pool never writes the head map: ``pointwise_gated``
with ``pool_only`` returns per-image means, and the classifier is one ``F.linear``. Every
activation is applied exactly once. Activations are channels_last in the plan's compute dtype
(the autocast dtype under autocast); kernels accumulate in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import ragged, reference
from ..geometry import PadMode, RaggedSizes
from ..kernels._launch import layer_scope
from ..kernels.dwconv_bn_act import choose_depthwise_impl, dwconv_bn_act
from ..kernels.expand_dwconv import expand_dwconv
from ..kernels.pointwise_gated import choose_pointwise_impl, pointwise_gated
from ..kernels.squeeze_excite import squeeze_excite_gate
from ..kernels.stem_conv_bn_act import stem_conv_bn_act
from ..plan import STEM, ForwardPlan
from ..shapes import walk
from .fold import FoldedBlock, folded
from .layer_plan import expand_dw_choice


def _ragged_args(sizes: Optional[RaggedSizes], device, kernel: int, stride: int, pad_mode: PadMode):
    """(valid_hw, pad_tl) device tensors for a spatial kernel of a ragged batch, or (None, None)."""
    if sizes is None:
        return None, None
    return sizes.on(device), sizes.on(device, "padding", kernel, stride, pad_mode)


def block_forward(block: FoldedBlock, x: torch.Tensor, padding: tuple[int, int, int, int], pad_mode: PadMode,
                  sizes: Optional[RaggedSizes] = None, fuse_expand: bool = False) -> torch.Tensor:
    """One fused block on a channels_last activation. ``padding``: the depthwise conv's (top,
    bottom, left, right) for this input size (see :func:`fastmbconv.shapes.walk`). ``sizes``:
    the per-image valid sizes of a ragged batch at this block's input, each image padded by its
    own offsets in ``pad_mode``. ``fuse_expand``: the expand and depthwise convs as one kernel
    (see :mod:`.layer_plan`)."""
    k, s = block.kernel, block.stride
    valid_hw, pad_tl = _ragged_args(sizes, x.device, k, s, pad_mode)
    if fuse_expand and block.w_expand is not None:
        d, partials = expand_dwconv(x, block.w_expand, block.b_expand, block.w_dw_fused, block.dw_scale,
                                    block.dw_shift, padding, s, act="silu", valid_hw=valid_hw, pad_tl=pad_tl)
    else:
        h = x if block.w_expand is None else pointwise_gated(x, block.w_expand, block.b_expand, act="silu")
        impl = choose_depthwise_impl(ragged=valid_hw is not None)
        w_dw = block.w_dw_conv if impl == "torch" else block.w_dw if block.w_dw_mma is None else block.w_dw_mma
        d, partials = dwconv_bn_act(h, w_dw, block.dw_scale, block.dw_shift, padding, s, act="silu",
                                    with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl, impl=impl)
    count = None if sizes is None else sizes.after(k, s).on(x.device, "counts")
    gate = squeeze_excite_gate(partials, block.se_w_reduce, block.se_b_reduce, block.se_w_expand, block.se_b_expand,
                               count=count, hw=d.shape[-2] * d.shape[-1])
    return pointwise_gated(d, block.w_project, block.b_project, gate=gate, residual=x if block.has_skip else None)


def _returned(x: torch.Tensor, sizes: Optional[RaggedSizes], plan: ForwardPlan) -> torch.Tensor:
    """A map as the caller gets it: zero outside each image's valid region, in the input's
    memory format (the kernels work channels_last)."""
    x = x if sizes is None else ragged.mask_invalid(x, sizes)
    return x if plan.channels_last else x.contiguous()


def run(model, x: torch.Tensor, plan: ForwardPlan):
    """The fused forward of ``model`` per ``plan`` (see :mod:`fastmbconv.plan`)."""
    weights = folded(model, plan.dtype)
    layers = walk(model, x.shape[-2], x.shape[-1])
    sizes = plan.sizes
    with layer_scope("conv_stem"):
        valid_hw, pad_tl = _ragged_args(sizes, x.device, 3, 2, plan.pad_mode)
        x = stem_conv_bn_act(x, weights.stem_weight, weights.stem_bias, layers[0].padding, 2, act="silu",
                             out_dtype=plan.dtype, valid_hw=valid_hw, pad_tl=pad_tl)
    sizes = None if sizes is None else sizes.after(3, 2)
    maps = [_returned(x, sizes, plan)] if STEM in plan.stages else []
    for layer in layers:
        if layer.kind != "block" or layer.stage > plan.last_stage:
            continue
        with layer_scope(layer.name):
            x = block_forward(weights.stages[layer.stage][layer.index], x, layer.padding, plan.pad_mode, sizes,
                              fuse_expand=expand_dw_choice(layer, plan.dtype, x.device) == "fused")
        if sizes is not None:
            sizes = sizes.after(layer.kernel, layer.stride)
        if layer.index == len(weights.stages[layer.stage]) - 1 and layer.stage in plan.stages:
            maps.append(_returned(x, sizes, plan))
    if plan.output == "stage_maps":
        return maps
    pooled = None
    if weights.head_weight is None:  # the head conv was pruned: the last stage's map is the features
        features = _returned(x, sizes, plan)
    else:
        with layer_scope("conv_head"):
            if plan.output == "logits" and model.global_pool == "avg":  # the head map is never written
                valid_hw = None if sizes is None else sizes.on(x.device)
                features = None
                pooled = pointwise_gated(x, weights.head_weight, weights.head_bias, act="silu", pool_only=True,
                                         valid_hw=valid_hw)
            else:
                features = _returned(pointwise_gated(x, weights.head_weight, weights.head_bias, act="silu"),
                                     sizes, plan)
    if plan.output != "logits":
        return (features, maps) if plan.output == "intermediates" else features
    with layer_scope("classifier"):  # max or no pooling: the reference head on the map
        return model.classifier(pooled) if features is None else reference.head(model, features, sizes)


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
