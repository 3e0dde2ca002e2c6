"""Depthwise kxk conv + folded BatchNorm + activation, with the SE pool sums in its epilogue.

Why one kernel: in eager PyTorch the depthwise conv, BN, SiLU and the SE mean each read and
write the whole expanded activation (the biggest tensors in EfficientNet). Here the input (the
expand conv's output, already activated) is read once, BN is a per-channel fp32
``scale``/``shift``, and each program writes the sums of its output tile per channel, so SE
never re-reads the activation. Those per-tile partial sums are reduced by the SE gate kernel in
a fixed order: no atomics, no zero-filled buffer, bitwise repeatable for a given config (the
autotuned block sizes and warps set the order of the in-tile sums).

Each program computes a 2-D tile of output pixels (``TILE_H`` x ``TILE_W``, chosen per map by
:func:`._utils.spatial_tile`) for ``BLOCK_C`` channels of one image. The input's pixel stride is
a compile-time constant, so the taps along a row are immediate offsets from one address; so are
the power-of-two factors of the channel count and the output's pixel stride, so channels_last
rows of 24, 40 or 56 channels still load and store as vectors. Two variants, picked by the
weight layout:

- (k*k, C) fp32 (:func:`taps_major`): each tap is a converted load and an fp32 FMA per element;
  for fp32 inputs, and for fp16/bf16 called with these weights.
- (k*k, C, 16) in the activations' fp16/bf16 (:func:`taps_diag`, what the fused model folds):
  each tap is a (pixels x 16) @ (16 x 16) tensor-core dot against that tap's diagonal weights.
  The dot wastes 15 of 16 multiplies, but the tensor cores have the throughput to spare, and it
  replaces the two instructions per element and tap (an fp16 -> fp32 convert and an FMA) that
  leave the FMA variant issue-bound. Products are exact and sums fp32, as in cuDNN.

Offsets inside an image are 32-bit unless an image, with the window's reach past its edges,
spans 2^31 elements (``INT64``); the image's base offset is always 64-bit. Padding is (top,
bottom, left, right), applied by masking, which covers symmetric and TF "SAME" padding; optional
ragged arguments give each image its own valid size and (top, left) padding.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._autotune import autotune
from ._depthwise_taps import taps_diag, taps_major, taps_of  # noqa: F401 - the fold takes taps_diag from here
from ._launch import call_op, launch, record_launch, select_kernel
from ._math import affine_activation, group_channels, image_extent
from ._utils import (
    ACT_CODES, activation_ref, autocast_off, batch_bucket, check_conv_geometry, check_grid, check_ragged_args,
    check_tensor, check_valid_sizes, conv2d_ref, dot_fp32, empty_like_format, interpreting, is_channels_last,
    needs_int64, next_pow2, refuse_grad, silu_math, spatial_tile, zero_invalid_ref,
)
from .affine_act_pool import affine_act_pool

OP = "dwconv_bn_act"


@triton.jit
def _dwconv_bn_act_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, out_ptr, part_ptr, valid_ptr, padtl_ptr,
    c_units, H, W, H_out, W_out, tiles_w, tiles_per_image,
    sxn, sxc, sxh, son, soc, soh, sow_units,
    pad_top, pad_left, batch_bucket, rows,
    C_UNIT: tl.constexpr, SXW: tl.constexpr, SOW_UNIT: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr,
    ACT: tl.constexpr, MATH: tl.constexpr, WITH_POOL: tl.constexpr,
    RAGGED: tl.constexpr, INT64: tl.constexpr, MMA: tl.constexpr, DOT_FP32: tl.constexpr,
    EVEN_C: tl.constexpr,  # C is a multiple of BLOCK_C (only claimed where that is known at launch)
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # The tile is (G, P, CB): G groups of CB channels by P = TILE_H * TILE_W pixels. With MMA,
    # CB = 16 and each tap is a batched 16x16 dot against that tap's diagonal weights (tensor
    # cores take fp16/bf16 directly, no per-element conversion or FMA); else G = 1, CB = BLOCK_C.
    CB: tl.constexpr = 16 if MMA else BLOCK_C
    G: tl.constexpr = BLOCK_C // CB
    P: tl.constexpr = TILE_H * TILE_W
    C = c_units * C_UNIT  # the channels, their power-of-two factor visible (see the launcher)
    pid = tl.program_id(0)  # image * tiles_per_image + tile
    n = pid // tiles_per_image
    tile = pid % tiles_per_image
    p = tl.arange(0, P)
    oh = (tile // tiles_w) * TILE_H + p // TILE_W
    ow = (tile % tiles_w) * TILE_W + p % TILE_W
    offs_g, rows_g, sums_g = group_channels(G, CB)
    offs_c = tl.program_id(1) * BLOCK_C + offs_g
    c_ok = offs_c < C

    h_img, w_img, top, left = image_extent(valid_ptr, padtl_ptr, n, H, W, pad_top, pad_left, RAGGED)
    if RAGGED:
        h_valid = (h_img + STRIDE - 1) // STRIDE
        w_valid = (w_img + STRIDE - 1) // STRIDE
    else:
        h_valid = H_out
        w_valid = W_out
    if INT64:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        offs_c = offs_c.to(tl.int64)

    # one pointer per (pixel, channel) at the tile's first tap; the taps of a row are then
    # compile-time offsets from it (the pixel stride SXW is a constant)
    ih0 = oh * STRIDE - top
    iw0 = ow * STRIDE - left
    x_tap0 = x_ptr + n.to(tl.int64) * sxn + (ih0 * sxh + iw0 * SXW)[None, :, None] + offs_c * sxc
    h_lim = h_img.to(tl.uint32)  # one unsigned compare tests 0 <= i < limit
    w_lim = w_img.to(tl.uint32)
    # The weight loads keep their channel mask even where every channel is real: unmasked, ptxas
    # spills a register of the 4x16-pixel 3x3 tensor-core kernel (B1's 480 channels at 15x15)
    if MMA:  # (k*k, C, 16) diagonal blocks: tap t's (16, 16) block of group g is contiguous
        ch_k = tl.program_id(1) * BLOCK_C + rows_g
        w_ok = ch_k < C
        w_tap0 = w_ptr + ch_k * 16 + tl.arange(0, CB)[None, None, :]
    else:  # (k*k, C)
        w_ok = c_ok
        w_tap0 = w_ptr + offs_c
    # with every channel of the block real (EVEN_C), the x loads' mask is per pixel only
    x_c_ok = True if EVEN_C else c_ok
    acc = tl.zeros((G, P, CB), dtype=tl.float32)
    x_row = x_tap0
    # a runtime trip count (rows == KSIZE), so neither the compiler nor ptxas unrolls the loop:
    # unrolled, every tap's loads are hoisted
    for ki in range(0, rows):
        row_ok = (ih0 + ki).to(tl.uint32) < h_lim
        for kj in tl.static_range(KSIZE):
            ok = (row_ok & ((iw0 + kj).to(tl.uint32) < w_lim))[None, :, None] & x_c_ok
            xv = tl.load(x_row + kj * SXW, mask=ok, other=0.0)
            if MMA:
                wv = tl.load(w_tap0 + (ki * KSIZE + kj) * C * 16, mask=w_ok, other=0.0)
                if DOT_FP32:  # bf16 under the interpreter, whose bf16 dot is not the GPU's (see dot_fp32)
                    acc = tl.dot(xv.to(tl.float32), wv.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(xv, wv, acc)
            else:
                wv = tl.load(w_tap0 + (ki * KSIZE + kj) * C, mask=w_ok, other=0.0)
                acc += xv.to(tl.float32) * wv
        x_row += sxh  # a pointer step: 64-bit, whatever the stride

    scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)
    y = affine_activation(acc, scale, shift, ACT, MATH)
    in_map = ((oh < H_out) & (ow < W_out))[None, :, None] & c_ok
    if RAGGED:
        y = tl.where(((oh < h_valid) & (ow < w_valid))[None, :, None], y, 0.0)
    out_off = (oh * soh + ow * (sow_units * SOW_UNIT))[None, :, None] + offs_c * soc
    tl.store(out_ptr + n.to(tl.int64) * son + out_off, y.to(out_ptr.dtype.element_ty), mask=in_map)

    if WITH_POOL:  # this tile's sums per channel: the SE gate kernel adds the tiles up
        part = tl.sum(tl.where(in_map, y, 0.0), axis=1)
        sum_c = tl.program_id(1) * BLOCK_C + sums_g
        tl.store(part_ptr + pid.to(tl.int64) * C + sum_c, part, mask=sum_c < C)


# GPU configs to try, (BLOCK_C channels, warps); the tile shape is chosen per map beforehand,
# since the number of partial sums depends on it. Pruned per launch to 8-32 outputs per thread
# (none of which spills on any B0-B7 layer: python -m fastmbconv.kernel_report) and to channel
# blocks no wider than the layer.
_GPU_CONFIGS = [(16, 1), (32, 1), (32, 2), (64, 2), (64, 4), (128, 4), (128, 8)]


def _prune_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    widest, pixels = max(16, next_pow2(args["c_units"] * args["C_UNIT"])), args["TILE_H"] * args["TILE_W"]
    kept = [c for c in configs if c.kwargs["BLOCK_C"] <= widest
            and 8 <= pixels * c.kwargs["BLOCK_C"] // (32 * c.num_warps) <= 32]
    return kept or configs[:1]


_dwconv_bn_act_autotuned = autotune(
    configs=[triton.Config({"BLOCK_C": c}, num_warps=w) for c, w in _GPU_CONFIGS],
    key=["c_units", "C_UNIT", "H_out", "W_out", "STRIDE", "KSIZE", "RAGGED", "TILE_H", "TILE_W", "batch_bucket"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_dwconv_bn_act_kernel)


def _check_args(x, weight, scale, shift, padding, stride, act, valid_hw, pad_tl):
    """Returns (k, padding, H_out, W_out, mma): ``mma`` when the weight is in the tensor-core
    layout of :func:`taps_diag`."""
    check_tensor(OP, "x", x, ndim=4)
    N, C, H, W = x.shape
    check_tensor(OP, "weight", weight, dtypes=None, device=x.device)
    if not weight.is_floating_point():
        raise TypeError(f"{OP}: weight must be floating point, got {weight.dtype}")
    mma = weight.ndim == 3 and weight.shape[-1] == 16
    if mma:  # (k*k, C, 16) diagonal blocks, in the activations' dtype
        k = round(weight.shape[0] ** 0.5)
        ok = weight.shape[1] == C and k * k == weight.shape[0]
        if ok and (weight.dtype != x.dtype or x.dtype not in (torch.float16, torch.bfloat16)):
            raise TypeError(f"{OP}: (k*k, C, 16) tensor-core weights need fp16 or bf16 x of the same dtype, got "
                            f"weight {weight.dtype} and x {x.dtype}")
    elif weight.ndim == 2:  # taps-major (k*k, C), as folded for the fused path
        k = round(weight.shape[0] ** 0.5)
        ok = weight.shape[1] == C and k * k == weight.shape[0]
    else:
        k = weight.shape[-1]
        ok = weight.ndim in (3, 4) and weight.shape[0] == C and weight.shape[-2] == k and weight.numel() == C * k * k
    if not ok:
        raise ValueError(f"{OP}: weight must be (C, 1, k, k), (C, k, k), (k*k, C) or (k*k, C, 16) with C={C} (the "
                         f"input's channel count), got {tuple(weight.shape)}")
    if k not in (3, 5):
        raise ValueError(f"{OP}: kernel size must be 3 or 5, got {k}")
    for name, t in (("scale", scale), ("shift", shift)):
        check_tensor(OP, name, t, ndim=1, dtypes=(torch.float32,), device=x.device)
        if t.shape[0] != C:
            raise ValueError(f"{OP}: {name} must have {C} entries (one per channel), got {t.shape[0]}")
    padding, H_out, W_out = check_conv_geometry(OP, H, W, k, stride, padding, act)
    check_ragged_args(OP, N, valid_hw, pad_tl, x.device)
    return k, padding, H_out, W_out, mma


def blocks_for(H_out: int, W_out: int, C: int, mma: bool = False) -> tuple[int, int, int]:
    """(TILE_H, TILE_W, BLOCK_C) of the heuristic config (the tile shape is also the autotuned
    configs': the number of partial sums depends on it). A dot needs 16 pixels and 16 channels."""
    if interpreting():  # ~20 ms per program plus ~5 per tap: few, large blocks (<= 64k elements)
        th, tw, bc = next_pow2(H_out), next_pow2(W_out), min(next_pow2(C), 4096)
        while th * tw * bc > 65536 and bc > 256:
            bc //= 2
        while th * tw * bc > 65536 and th > 1:
            th //= 2
        if mma:
            tw, bc = max(tw, 16 // th), max(bc, 16)
        return th, tw, bc
    return (*spatial_tile(H_out, W_out), 16 if mma else min(32, max(16, next_pow2(C))))


def _unit(n: int) -> int:
    """The power-of-two factor (below 16) that triton's own specialisation of ``n`` would miss."""
    return 1 if n % 16 == 0 else math.gcd(n, 16)


def dwconv_bn_act_launch(x, weight, scale, shift, padding, stride=1, act="silu", with_pool=False,
                         valid_hw=None, pad_tl=None):
    """Check, allocate and launch. Returns (out, partial_sums): ``partial_sums`` is (N, T, C)
    fp32, each image's output summed over each of its T tiles (valid pixels only), or an empty
    tensor without ``with_pool``; ``partial_sums.sum(1)`` are the per-image sums."""
    k, padding, H_out, W_out, mma = _check_args(x, weight, scale, shift, padding, stride, act, valid_hw, pad_tl)
    N, C, H, W = x.shape
    tile_h, tile_w, block_c = blocks_for(H_out, W_out, C, mma)
    tiles_w = -(-W_out // tile_w)
    tiles = -(-H_out // tile_h) * tiles_w
    out = empty_like_format(x, (N, C, H_out, W_out))
    partials = torch.empty((N, tiles, C) if with_pool else (0,), dtype=torch.float32, device=x.device)
    if N == 0 or C == 0:
        return out, partials
    check_valid_sizes(OP, valid_hw, H, W, pad_tl, k)
    ragged = valid_hw is not None
    # C and the output's pixel stride as units x UNIT, UNIT the largest power of two below 16
    # that divides them (1 where 16 does): triton infers at most "a multiple of 16" from a
    # runtime integer, so where C is 24, 40 or 56 the channel masks and channels_last rows would
    # look unaligned and every access scalar
    c_unit, sow_unit = _unit(C), _unit(out.stride(3))
    if mma:  # one warp's 16-row MMA tiles cover the 32 or 64 pixels (2 or 4 warps: more instructions
        # per output). Pipelined loads cost more than they hide, except where 1 stage spills: a
        # partly masked channel group (B3's 40 and 24 channels, 8 B with triton 3.6) and 3x3
        # stride 2 (8-16 B with 3.6 to 3.8, e.g. B5's 384 and B7's 480 channels; memory-bound
        # there, so the model gives 2 stages the same time)
        w_taps = weight
        two_stages = C % 16 != 0 or (k == 3 and stride == 2)
        kernel, config = _dwconv_bn_act_kernel, {"BLOCK_C": block_c, "num_warps": 1,
                                                 "num_stages": 2 if two_stages else 1}
    else:
        w_taps = (weight if weight.ndim == 2 else taps_major(weight)).float()
        kernel, config = select_kernel(
            _dwconv_bn_act_autotuned, _dwconv_bn_act_kernel,
            (OP, C, H_out, W_out, stride, k, ragged, tile_h, tile_w, batch_bucket(N), x.dtype, out.dtype),
            {"BLOCK_C": block_c, "num_warps": min(8, max(1, block_c // 16))}, on=x)

    def grid(meta):
        return (N * tiles, triton.cdiv(C, meta["BLOCK_C"]))

    check_grid(OP, grid, (f"{N} images of {tiles} tiles", f"{C} channels"), kernel, config, upper=(N * tiles, C))
    launch(OP, kernel, grid, dict(
        x_ptr=x, w_ptr=w_taps.contiguous(), scale_ptr=scale.contiguous(), shift_ptr=shift.contiguous(), out_ptr=out,
        part_ptr=partials if with_pool else scale, valid_ptr=valid_hw.contiguous() if ragged else scale,
        padtl_ptr=pad_tl.contiguous() if ragged else scale,
        c_units=C // c_unit, H=H, W=W, H_out=H_out, W_out=W_out, tiles_w=tiles_w, tiles_per_image=tiles,
        **dict(zip(("sxn", "sxc", "sxh"), x.stride()[:3])), **dict(zip(("son", "soc", "soh"), out.stride()[:3])),
        sow_units=out.stride(3) // sow_unit,
        pad_top=padding[0], pad_left=padding[2], batch_bucket=batch_bucket(N), rows=k,
    ), dict(
        C_UNIT=c_unit, SXW=x.stride(3), SOW_UNIT=sow_unit, STRIDE=stride, KSIZE=k, ACT=ACT_CODES[act],
        MATH=silu_math(x.dtype, x.device),
        WITH_POOL=with_pool, RAGGED=ragged, INT64=needs_int64(x, out, window=k - 1), MMA=mma,
        DOT_FP32=dot_fp32(x.dtype),
        EVEN_C=mma and C % block_c == 0,  # the autotuned FMA variant's BLOCK_C varies: never claimed there
        TILE_H=tile_h, TILE_W=tile_w, **config,
    ), on=x)
    return out, partials


@torch.library.custom_op("fastmbconv::dwconv_bn_act", mutates_args=())
def _dwconv_bn_act_op(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    padding: list[int], stride: int, act: str, with_pool: bool,
    valid_hw: Optional[torch.Tensor], pad_tl: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    return dwconv_bn_act_launch(x, weight, scale, shift, padding, stride, act, with_pool, valid_hw, pad_tl)


@_dwconv_bn_act_op.register_fake
def _(x, weight, scale, shift, padding, stride, act, with_pool, valid_hw, pad_tl):
    k, padding, H_out, W_out, mma = _check_args(x, weight, scale, shift, padding, stride, act, valid_hw, pad_tl)
    N, C = x.shape[:2]
    tile_h, tile_w, _ = blocks_for(H_out, W_out, C, mma)
    tiles = -(-H_out // tile_h) * -(-W_out // tile_w)
    out = empty_like_format(x, (N, C, H_out, W_out))
    return out, x.new_empty((N, tiles, C) if with_pool else (0,), dtype=torch.float32)


# ---------------------------------------------------------------------- implementation choice
IMPL_ENV_VAR = "FASTMBCONV_DEPTHWISE_IMPL"


def choose_depthwise_impl(ragged: bool = False) -> str:
    """``"triton"`` unless ``FASTMBCONV_DEPTHWISE_IMPL=torch`` forces the cuDNN conv with the
    :mod:`.affine_act_pool` epilogue (any device; a ragged batch always takes Triton, whose
    per-image padding the conv lacks). It applies where the depthwise conv is its own launch:
    blocks whose expand runs in ``expand_dwconv`` keep that kernel. The default stays Triton
    until a GPU run times both in one session (the ``fused_cudnn_dw`` benchmark provider)."""
    forced = os.environ.get(IMPL_ENV_VAR, "").strip().lower()
    if forced not in ("", "auto", "triton", "torch"):
        raise ValueError(f"{IMPL_ENV_VAR} must be 'auto', 'triton' or 'torch', got {forced!r}")
    return "torch" if forced == "torch" and not ragged else "triton"


def cudnn_dwconv_bn_act(x, weight, scale, shift, padding, stride=1, act="silu", with_pool=False):
    """The depthwise conv on cuDNN (``F.conv2d``, in x's dtype and memory format), then BN,
    activation and the SE pool sums in one in-place pass (:func:`.affine_act_pool.affine_act_pool`).
    Returns (out, partial_sums) as :func:`dwconv_bn_act_launch` does."""
    k, (top, bottom, left, right), _, _, _ = _check_args(x, weight, scale, shift, padding, stride, act, None, None)
    refuse_grad(OP, "the cuDNN route", "its BN and activation pass has no gradient", x, weight, scale, shift)
    C = x.shape[1]
    record_launch(OP + "[torch]")
    if weight.ndim == 4 and weight.dtype == x.dtype:  # (C, 1, k, k) as the fold keeps it for this route
        w = weight
    else:
        w = taps_of(weight).t().reshape(C, 1, k, k).to(x.dtype)
    channels_last = is_channels_last(x)
    with autocast_off(x.device):
        if top != bottom or left != right:  # TF "SAME": F.conv2d pads symmetrically only
            x, conv_pad = F.pad(x, (left, right, top, bottom)), (0, 0)
        else:
            conv_pad = (top, left)
        y = F.conv2d(x, w, None, stride, conv_pad, groups=C)
    if channels_last and not is_channels_last(y) and y.shape[-2:] != (1, 1):
        y = y.contiguous(memory_format=torch.channels_last)
    y, partials = affine_act_pool(y, scale, shift, act, with_pool=True) if with_pool else (
        affine_act_pool(y, scale, shift, act), y.new_empty((0,), dtype=torch.float32))
    return y, partials


def dwconv_bn_act(x, weight, scale, shift, padding, stride=1, act="silu", with_pool=False, valid_hw=None,
                  pad_tl=None, impl: str | None = None):
    """``act(conv_dw(x) * scale + shift)``; returns ``out`` or ``(out, partial_sums)``.

    ``weight`` is (C, 1, k, k), (C, k, k), or (k*k, C) fp32 as :func:`taps_major` makes it (the
    other layouts cost a transposing copy per call), or (k*k, C, 16) as :func:`taps_diag` makes it
    for fp16/bf16 ``x`` (the tensor-core variant). ``padding`` is (top, bottom, left, right).
    ``valid_hw``/``pad_tl`` (N, 2) int32 make a ragged batch: image n reads only its valid
    (h, w) corner with its own (top, left) padding; its outputs beyond (ceil(h/stride),
    ceil(w/stride)) are written as 0 and left out of the sums. ``partial_sums`` is (N, T, C)
    fp32: per image, the output summed over each of its T tiles. ``impl`` forces ``"triton"`` or
    ``"torch"`` (cuDNN + one epilogue pass; dense batches only); by default
    :func:`choose_depthwise_impl` decides.
    """
    impl = impl or choose_depthwise_impl(ragged=valid_hw is not None)
    if impl == "torch":
        if valid_hw is not None:
            raise ValueError(f"{OP}: the torch implementation takes dense batches only (no valid_hw)")
        out, partials = cudnn_dwconv_bn_act(x, weight, scale, shift, padding, stride, act, with_pool)
        return (out, partials) if with_pool else out
    if impl != "triton":
        raise ValueError(f"{OP}: impl must be 'triton', 'torch' or None, got {impl!r}")
    out, partials = call_op(
        torch.ops.fastmbconv.dwconv_bn_act, dwconv_bn_act_launch,
        x, weight, scale, shift, [int(p) for p in padding], int(stride), act, bool(with_pool), valid_hw, pad_tl,
    )
    return (out, partials) if with_pool else out


def dwconv_bn_act_ref(x, weight, scale, shift, padding, stride=1, act="silu", with_pool=False, valid_hw=None,
                      pad_tl=None, compute_dtype=torch.float32):
    """Pure-torch twin (F.pad + grouped F.conv2d), computed in ``compute_dtype``; with
    ``with_pool`` it returns (out, per-image sums (N, C)) (one 'tile' per image)."""
    C = x.shape[1]
    taps = taps_of(weight)
    k = round(taps.shape[0] ** 0.5)
    w = taps.t().reshape(C, 1, k, k).to(compute_dtype)
    y = conv2d_ref(x.to(compute_dtype), w, None, padding, stride, groups=C, valid_hw=valid_hw, pad_tl=pad_tl)
    y = activation_ref(y * scale.to(compute_dtype).view(1, C, 1, 1) + shift.to(compute_dtype).view(1, C, 1, 1), act)
    y = zero_invalid_ref(y, valid_hw, stride)
    if with_pool:
        return y, y.sum((2, 3))
    return y
