"""The stem: a dense kxk conv of the few input channels + folded BatchNorm + activation.

Why a kernel of its own: torch would cast the image to the compute dtype and channels_last (a
copy), run the conv, then SiLU (another pass over the stem's 32-channel map, EfficientNet's
largest). Here the image is read once in whatever float dtype and layout it comes in, the
activation is applied once, and the output is written channels_last in the compute dtype.

Each program computes a 2-D tile of output pixels for up to 64 output channels (all of
EfficientNet's) as one matrix product on the tensor cores: the tile's (pixels x k*k*C_in)
patches, gathered straight from the image, times the weights laid out (k*k*C_in, C_out).
Padding and ragged arguments work as in :mod:`.dwconv_bn_act`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import call_op, launch
from ._math import bias_activation, image_extent, round_to_bf16
from ._utils import (
    ACT_CODES,
    FLOAT_DTYPES,
    activation_ref,
    check_conv_geometry,
    check_grid,
    check_ragged_args,
    check_tensor,
    check_valid_sizes,
    conv2d_ref,
    dot_fp32,
    interpreting,
    needs_int64,
    next_pow2,
    round_bf16,
    silu_math,
    spatial_tile,
    zero_invalid_ref,
)

OP = "stem_conv_bn_act"
# Patch columns per step: the whole patch of a 7x7 kernel over 16 channels (1024 columns) needed
# 256-512 KiB of shared memory on sm_90, past its 227 KiB; 3x3x3 (27) is one step of 32.
MAX_BLOCK_K = 64
# Output channels per program: EfficientNet's stems (32-64) in one; wider ones over a second grid
# axis, since a patch of several steps times 512 channels' weights, pipelined three deep, needed
# 288-328 KiB of shared memory on sm_90.
MAX_BLOCK_CO = 64


@triton.jit
def _stem_conv_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, valid_ptr, padtl_ptr,
    C_out, H, W, H_out, W_out, tiles_w, tiles_per_image,
    sxn, sxc, sxh, sxw, son, soc, soh, sow, pad_top, pad_left,
    C_IN: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr, MATH: tl.constexpr,
    RAGGED: tl.constexpr, INT64: tl.constexpr, DOT_FP32: tl.constexpr, ROUND_BF16: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    pid = tl.program_id(0)  # image * tiles_per_image + tile
    n = pid // tiles_per_image
    tile = pid % tiles_per_image
    offs_p = tl.arange(0, TILE_H * TILE_W)
    oh = (tile // tiles_w) * TILE_H + offs_p // TILE_W
    ow = (tile % tiles_w) * TILE_W + offs_p % TILE_W
    offs_co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < C_out
    h_img, w_img, top, left = image_extent(valid_ptr, padtl_ptr, n, H, W, pad_top, pad_left, RAGGED)
    if INT64:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        offs_co = offs_co.to(tl.int64)

    # the (pixels x taps*channels) patch matrix times the (taps*channels x C_out) weights, in
    # steps of BLOCK_K columns (one step for EfficientNet's 3x3x3); each offset is a pixel part
    # plus a column part: one add per patch element
    ih0 = oh * STRIDE - top
    iw0 = ow * STRIDE - left
    x_image = x_ptr + n.to(tl.int64) * sxn
    acc = tl.zeros((TILE_H * TILE_W, BLOCK_CO), dtype=tl.float32)
    for k0 in range(0, KSIZE * KSIZE * C_IN, BLOCK_K):
        # the im2col column index: (tap row, tap column, input channel)
        kk = k0 + tl.arange(0, BLOCK_K)
        ki = kk // (KSIZE * C_IN)
        kj = (kk // C_IN) % KSIZE
        ci = kk % C_IN
        k_ok = kk < KSIZE * KSIZE * C_IN
        if INT64:
            ki = ki.to(tl.int64)
            kj = kj.to(tl.int64)
            ci = ci.to(tl.int64)
        ih = ih0[:, None] + ki[None, :]
        iw = iw0[:, None] + kj[None, :]
        ok = (ih.to(tl.uint32) < h_img.to(tl.uint32)) & (iw.to(tl.uint32) < w_img.to(tl.uint32)) & k_ok[None, :]
        offsets = (ih0 * sxh + iw0 * sxw)[:, None] + (ki * sxh + kj * sxw + ci * sxc)[None, :]
        patches = tl.load(x_image + offsets, mask=ok, other=0.0)
        w = tl.load(w_ptr + kk[:, None] * C_out + offs_co[None, :], mask=k_ok[:, None] & co_ok[None, :], other=0.0)
        if DOT_FP32:
            patches = patches.to(tl.float32)
            if ROUND_BF16:  # an fp32 image and the fp32 weights, cast to bf16 on a GPU
                patches, w = round_to_bf16(patches), round_to_bf16(w)
            acc = tl.dot(patches, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(patches.to(out_ptr.dtype.element_ty), w.to(out_ptr.dtype.element_ty), acc)

    y = bias_activation(acc, tl.load(bias_ptr + offs_co, mask=co_ok, other=0.0), ACT, MATH)
    if RAGGED:
        y = tl.where(((oh < (h_img + STRIDE - 1) // STRIDE) & (ow < (w_img + STRIDE - 1) // STRIDE))[:, None], y, 0.0)
    in_map = ((oh < H_out) & (ow < W_out))[:, None] & co_ok[None, :]
    out_off = (oh * soh + ow * sow)[:, None] + (offs_co * soc)[None, :]
    tl.store(out_ptr + n.to(tl.int64) * son + out_off, y.to(out_ptr.dtype.element_ty), mask=in_map)


def taps_major(weight: torch.Tensor) -> torch.Tensor:
    """Conv weights (C_out, C_in, k, k) in the kernel's (k*k*C_in, C_out) layout, fp32."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).float().contiguous()


def _check_args(x, weight, bias, padding, stride, act, in_channels, valid_hw, pad_tl, out_dtype):
    check_tensor(OP, "x", x, ndim=4)
    N, C_in, H, W = x.shape
    check_tensor(OP, "bias", bias, ndim=1, dtypes=(torch.float32,), device=x.device)
    C_out = bias.shape[0]
    check_tensor(OP, "weight", weight, dtypes=None, device=x.device)
    if weight.ndim == 4:
        k = weight.shape[-1]
        ok = tuple(weight.shape) == (C_out, C_in, k, k)
    else:
        k = round((weight.shape[0] // max(C_in, 1)) ** 0.5) if weight.ndim == 2 else 0
        ok = weight.ndim == 2 and tuple(weight.shape) == (k * k * C_in, C_out)
    if not ok or not weight.is_floating_point():
        raise ValueError(f"{OP}: weight must be ({C_out}, {C_in}, k, k) or (k*k*{C_in}, {C_out}) floating point "
                         f"for {C_in} input and {C_out} output channels (the bias's), got {tuple(weight.shape)}")
    if weight.ndim == 2 and weight.dtype != torch.float32:
        raise TypeError(f"{OP}: a (k*k*C_in, C_out) weight is the kernel's own fp32 layout (taps_major), got "
                        f"{weight.dtype}")
    if C_in > 16:
        raise ValueError(f"{OP}: meant for the few channels of an image (at most 16), got {C_in}")
    if k not in (1, 3, 5, 7):
        raise ValueError(f"{OP}: the kernel must be 1, 3, 5 or 7, got {k}")
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{OP}: out_dtype must be one of {FLOAT_DTYPES}, got {out_dtype}")
    padding, H_out, W_out = check_conv_geometry(OP, H, W, k, stride, padding, act)
    check_ragged_args(OP, N, valid_hw, pad_tl, x.device)
    return k, padding, H_out, W_out


def _empty_out(x, C_out, H_out, W_out, out_dtype):
    return torch.empty((x.shape[0], C_out, H_out, W_out), dtype=out_dtype, device=x.device,
                       memory_format=torch.channels_last)


def tile_for(H_out: int, W_out: int, width: int) -> tuple[int, int]:
    """(TILE_H, TILE_W) of output pixels per program; ``width``: the widest matrix dimension.
    Up to 128 pixels where that is at most 32: the im2col column indices (tap row, column and
    channel, by division) and the pixel indices are per program, a third of B0's stem over 64
    pixels; over 128 it runs at its memory time (static sm_90 model, batch 256, fp16). 64 for
    wider outputs, whose accumulators would not fit 128 (B4's and B7's fp32 stem take 255
    registers at 64 pixels with triton 3.6)."""
    if interpreting():  # ~30 ms per program: few, large blocks
        tile_h, tile_w = next_pow2(H_out), next_pow2(W_out)
        while tile_h * tile_w * width > 131072 and tile_h > 1:
            tile_h //= 2
        return tile_h, tile_w
    return spatial_tile(H_out, W_out, 128 if width <= 32 else 64)


def stem_conv_bn_act_launch(x, weight, bias, padding, stride, act, out_dtype, valid_hw=None, pad_tl=None):
    k, padding, H_out, W_out = _check_args(x, weight, bias, padding, stride, act, x.shape[1], valid_hw, pad_tl,
                                           out_dtype)
    N, C_in, H, W = x.shape
    C_out = bias.shape[0]
    out = _empty_out(x, C_out, H_out, W_out, out_dtype)
    if N == 0:
        return out
    check_valid_sizes(OP, valid_hw, H, W, pad_tl, k)
    block_k = max(16, min(next_pow2(k * k * C_in), MAX_BLOCK_K))
    block_co = max(16, min(next_pow2(C_out), MAX_BLOCK_CO))
    tile_h, tile_w = tile_for(H_out, W_out, max(block_k, block_co))
    tiles_w = -(-W_out // tile_w)
    tiles = -(-H_out // tile_h) * tiles_w
    grid = (N * tiles, -(-C_out // block_co))
    check_grid(OP, grid, (f"{N} images of {tiles} tiles", f"{C_out} output channels"))
    ragged = valid_hw is not None
    launch(OP, _stem_conv_kernel, grid, dict(
        x_ptr=x, w_ptr=(weight if weight.ndim == 2 else taps_major(weight)).contiguous(),
        bias_ptr=bias.contiguous(), out_ptr=out,
        valid_ptr=valid_hw.contiguous() if ragged else bias, padtl_ptr=pad_tl.contiguous() if ragged else bias,
        C_out=C_out, H=H, W=W, H_out=H_out, W_out=W_out, tiles_w=tiles_w, tiles_per_image=tiles,
        **dict(zip(("sxn", "sxc", "sxh", "sxw"), x.stride())), **dict(zip(("son", "soc", "soh", "sow"), out.stride())),
        pad_top=padding[0], pad_left=padding[2],
    ), dict(
        C_IN=C_in, STRIDE=stride, KSIZE=k, ACT=ACT_CODES[act],
        MATH=silu_math(out_dtype, x.device), RAGGED=ragged,
        INT64=needs_int64(x, out, window=k - 1), DOT_FP32=dot_fp32(out_dtype), ROUND_BF16=round_bf16(out_dtype),
        TILE_H=tile_h, TILE_W=tile_w, BLOCK_K=block_k, BLOCK_CO=block_co, num_warps=4,
    ), on=x)
    return out


@torch.library.custom_op("fastmbconv::stem_conv_bn_act", mutates_args=())
def _stem_conv_bn_act_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: list[int], stride: int, act: str,
    out_dtype: torch.dtype, valid_hw: Optional[torch.Tensor], pad_tl: Optional[torch.Tensor],
) -> torch.Tensor:
    return stem_conv_bn_act_launch(x, weight, bias, padding, stride, act, out_dtype, valid_hw, pad_tl)


@_stem_conv_bn_act_op.register_fake
def _(x, weight, bias, padding, stride, act, out_dtype, valid_hw, pad_tl):
    k, padding, H_out, W_out = _check_args(x, weight, bias, padding, stride, act, x.shape[1], valid_hw, pad_tl,
                                           out_dtype)
    return _empty_out(x, bias.shape[0], H_out, W_out, out_dtype)


def stem_conv_bn_act(x, weight, bias, padding, stride=2, act="silu", out_dtype=None, valid_hw=None, pad_tl=None):
    """``act(conv(x, weight) + bias)`` written channels_last in ``out_dtype`` (default x's).

    ``weight`` is (C_out, C_in, k, k) or (k*k*C_in, C_out) as :func:`taps_major` makes it (fp32,
    BN folded in); ``bias`` (C_out,) fp32. ``padding`` is (top, bottom, left, right);
    ``valid_hw``/``pad_tl`` (N, 2) int32 make a ragged batch, as in :func:`.dwconv_bn_act`."""
    return call_op(torch.ops.fastmbconv.stem_conv_bn_act, stem_conv_bn_act_launch,
                   x, weight, bias, [int(p) for p in padding], int(stride), act, out_dtype or x.dtype, valid_hw, pad_tl)


def stem_conv_bn_act_ref(x, weight, bias, padding, stride=2, act="silu", out_dtype=None, valid_hw=None,
                         pad_tl=None, compute_dtype=torch.float32):
    """Pure-torch twin (F.pad + F.conv2d per image), computed in ``compute_dtype``."""
    C_in, C_out = x.shape[1], bias.shape[0]
    if weight.ndim == 2:
        k = round((weight.shape[0] // C_in) ** 0.5)
        weight = weight.reshape(k, k, C_in, C_out).permute(3, 2, 0, 1)
    y = conv2d_ref(x.to(compute_dtype), weight.to(compute_dtype), bias.to(compute_dtype), padding, stride,
                   valid_hw=valid_hw, pad_tl=pad_tl)
    return zero_invalid_ref(activation_ref(y, act), valid_hw, stride)
