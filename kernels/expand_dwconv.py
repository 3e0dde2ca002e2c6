"""The expand 1x1 and the depthwise kxk of an MBConv block in one kernel: the expanded tensor,
the block's largest, never goes to HBM.

Each work item is one output tile (``TILE_H`` x ``TILE_W`` pixels, see :func:`tile_for`) of one
image for ``BLOCK_C`` expanded channels. It computes the expand conv (folded BN, bias, SiLU)
for the tile's input halo with ``tl.dot`` in chunks of :data:`CHUNK` halo pixels, zero outside
the image (the depthwise conv's padding), and stores it in fp32 to a scratch slot of the
program's own. After a barrier the depthwise taps read shifted windows of the slot (registers
cannot shift), with constant offsets and no bounds checks; then the folded BN, SiLU, the output
store and the per-tile SE sums, as in :mod:`.dwconv_bn_act`.

Where the slots live: global scratch, not shared memory. The grid is persistent, two programs
per SM, each with two slots of at most ``320 x BLOCK_C`` fp32 used in turn, so the scratch is a
few MiB that every item rewrites: it stays in L2, and mostly in the SM's L1, which is also what
serves the taps' overlapping reads. Triton's ``tl`` language has no shared-memory allocation;
the installed Triton's Gluon dialect does (``gl.allocate_shared_memory``), but Gluon kernels
need hand-written layouts per architecture and cannot run under the interpreter, so this op
would have no CPU tests.

Both padding conventions, strides 1 and 2, kernels 3 and 5, ragged batches (each image's valid
size and (top, left) padding), fp32/fp16/bf16 inputs with fp32 accumulation, 64-bit offsets
when an image spans 2^31 elements.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._launch import call_op, launch
from ._math import activation, image_extent
from ._utils import (
    ACT_CODES,
    activation_ref,
    check_1x1_weight,
    check_conv_geometry,
    check_ragged_args,
    check_valid_sizes,
    check_tensor,
    empty_like_format,
    interpreting,
    needs_int64,
    next_pow2,
)
from .dwconv_bn_act import dwconv_bn_act_ref

OP = "expand_dwconv"


@triton.jit
def _expand_dwconv_kernel(
    x_ptr, we_ptr, be_ptr, wd_ptr, scale_ptr, shift_ptr, out_ptr, part_ptr, scratch_ptr, valid_ptr, padtl_ptr,
    C, H, W, H_out, W_out, items, sxn, sxh, son, soh, sow, pad_top, pad_left,
    C_IN: tl.constexpr, SXC: tl.constexpr, SXW: tl.constexpr, SOC: tl.constexpr, TILES_W: tl.constexpr,
    TILES: tl.constexpr, C_BLOCKS: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr,
    FAST_MATH: tl.constexpr, RAGGED: tl.constexpr, INT64: tl.constexpr, DOT_FP32: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_l = tl.arange(0, BLOCK_C)
    r = tl.arange(0, TILE_H)
    q = tl.arange(0, TILE_W)
    # offsets of each output pixel's first tap in a slot: the other taps are constant offsets
    # (immediates in the loads)
    tap0 = ((((r * STRIDE)[:, None] * HALO_W + (q * STRIDE)[None, :]) * BLOCK_C)[:, :, None]
            + offs_l[None, None, :])
    buf = 0
    for item in range(pid, items, tl.num_programs(0)):
        cb = item % C_BLOCKS  # channel blocks vary fastest: a tile's input halo is re-read from L2
        rest = item // C_BLOCKS
        n = rest // TILES
        tile = rest % TILES
        offs_c = cb * BLOCK_C + offs_l
        c_ok = offs_c < C
        # two slots per program, used in turn: an item's writes cannot race the previous
        # item's reads, so one barrier per item suffices
        slot = scratch_ptr + (pid * 2 + buf) * (HALO * BLOCK_C)
        buf = 1 - buf
        h_img, w_img, top, left = image_extent(valid_ptr, padtl_ptr, n, H, W, pad_top, pad_left, RAGGED)
        oh0 = (tile // TILES_W) * TILE_H
        ow0 = (tile % TILES_W) * TILE_W
        ih0 = oh0 * STRIDE - top
        iw0 = ow0 * STRIDE - left
        x_img = x_ptr + n.to(tl.int64) * sxn
        bias = tl.load(be_ptr + offs_c, mask=c_ok, other=0.0)

        # expand: the halo's expanded channels (bias folded into the accumulator), SiLU'd and
        # zero outside the image, into the slot in fp32 (the depthwise taps then need no
        # conversions, and the expanded values are never rounded)
        for h0 in tl.static_range(0, HALO, CHUNK):
            hp = h0 + tl.arange(0, CHUNK)
            ih = ih0 + hp // HALO_W
            iw = iw0 + hp % HALO_W
            in_img = (ih.to(tl.uint32) < h_img.to(tl.uint32)) & (iw.to(tl.uint32) < w_img.to(tl.uint32))
            if h0 + CHUNK > HALO:
                in_img = in_img & (hp < HALO)
            if INT64:
                rows = x_img + ih.to(tl.int64) * sxh + iw.to(tl.int64) * SXW
            else:
                rows = x_img + ih * sxh + iw * SXW
            acc = tl.zeros((CHUNK, BLOCK_C), dtype=tl.float32) + bias[None, :]
            for k0 in tl.static_range(0, C_IN, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < C_IN
                if INT64:
                    k_off = ks.to(tl.int64) * SXC
                else:
                    k_off = ks * SXC
                a = tl.load(rows[:, None] + k_off[None, :], mask=in_img[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(we_ptr + offs_c[None, :] * C_IN + ks[:, None], mask=k_ok[:, None] & c_ok[None, :],
                            other=0.0)
                if DOT_FP32:
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            e = tl.where(in_img[:, None], activation(acc, 1, FAST_MATH), 0.0)
            dst = slot + hp[:, None] * BLOCK_C + offs_l[None, :]
            if h0 + CHUNK > HALO:
                tl.store(dst, e, mask=(hp < HALO)[:, None])
            else:
                tl.store(dst, e)
        tl.debug_barrier()  # the whole halo is in the slot before any tap reads it

        # depthwise from the slot: no bounds to check, the halo holds the padding
        dacc = tl.zeros((TILE_H, TILE_W, BLOCK_C), dtype=tl.float32)
        for ki in tl.static_range(KSIZE):
            for kj in tl.static_range(KSIZE):
                wv = tl.load(wd_ptr + (ki * KSIZE + kj) * C + offs_c, mask=c_ok, other=0.0)
                dacc += tl.load(slot + tap0 + (ki * HALO_W + kj) * BLOCK_C) * wv[None, None, :]

        oh = oh0 + r
        ow = ow0 + q
        if INT64:
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
        scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)
        shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)
        y = activation(dacc * scale[None, None, :] + shift[None, None, :], ACT, FAST_MATH)
        in_map = (oh < H_out)[:, None, None] & (ow < W_out)[None, :, None] & c_ok[None, None, :]
        if RAGGED:
            h_valid = (h_img + STRIDE - 1) // STRIDE
            w_valid = (w_img + STRIDE - 1) // STRIDE
            y = tl.where((oh < h_valid)[:, None, None] & (ow < w_valid)[None, :, None], y, 0.0)
        out_off = (oh * soh)[:, None, None] + (ow * sow)[None, :, None] + (offs_c * SOC)[None, None, :]
        tl.store(out_ptr + n.to(tl.int64) * son + out_off, y.to(out_ptr.dtype.element_ty), mask=in_map)
        part = tl.sum(tl.sum(tl.where(in_map, y, 0.0), axis=0), axis=0)
        tl.store(part_ptr + rest.to(tl.int64) * C + offs_c, part, mask=c_ok)


def _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act, valid_hw, pad_tl):
    check_tensor(OP, "x", x, ndim=4)
    N, C_in, H, W = x.shape
    C = check_1x1_weight(OP, "w_expand", w_expand, x, "C")
    check_tensor(OP, "w_dw", w_dw, ndim=2, dtypes=(torch.float32,), device=x.device)
    k = round(w_dw.shape[0] ** 0.5)
    if w_dw.shape[1] != C or k * k != w_dw.shape[0] or k not in (3, 5):
        raise ValueError(f"{OP}: w_dw must be (k*k, {C}) fp32 with k 3 or 5 (taps-major, see "
                         f"dwconv_bn_act.taps_major), got {tuple(w_dw.shape)}")
    for name, t in (("b_expand", b_expand), ("scale", scale), ("shift", shift)):
        check_tensor(OP, name, t, ndim=1, dtypes=(torch.float32,), device=x.device)
        if t.shape[0] != C:
            raise ValueError(f"{OP}: {name} must have {C} fp32 entries (one per expanded channel), got {t.shape[0]}")
    padding, H_out, W_out = check_conv_geometry(OP, H, W, k, stride, padding, act)
    check_ragged_args(OP, N, valid_hw, pad_tl, x.device)
    return k, padding, H_out, W_out, C


# Relative costs per channel, in thread instructions, for choosing a tile (the kernel report
# measures the real ones): an expanded halo element (SiLU, mask, scratch store), a depthwise tap
# (a quarter of a 4-wide load and an FMA), an output's epilogue, and a work item's set-up.
_HALO_COST, _TAP_COST, _OUT_COST, _ITEM_COST = 8.0, 1.25, 10.0, 600.0
CHUNK = 64  # halo pixels per expand product (a warpgroup's wgmma M)
_ITEM_CHANNELS = 24  # a work item's fixed cost, in channels' worth of its per-channel work


def tile_for(H_out: int, W_out: int, kernel: int, stride: int) -> tuple[int, int]:
    """The power-of-two output tile that costs the least over the map: big tiles share their
    halo rows and columns, small ones waste fewer pixels past the map's edge, and the halo is
    computed in whole chunks of :data:`CHUNK` pixels. Up to 128 pixels for 3x3 kernels, 64 for
    5x5 (the 25 taps' loads in flight need the registers), and halos up to 256 pixels."""
    best = None
    for th in (2, 4, 8, 16):
        for tw in (2, 4, 8, 16, 32):
            if not 32 <= th * tw <= (128 if kernel == 3 else 64):
                continue
            halo = ((th - 1) * stride + kernel) * ((tw - 1) * stride + kernel)
            if halo > (256 if kernel == 5 else 320):  # registers, and the slot size
                continue
            tiles = -(-H_out // th) * -(-W_out // tw)
            cost = tiles * (-(-halo // CHUNK) * CHUNK * _HALO_COST
                            + th * tw * (kernel * kernel * _TAP_COST + _OUT_COST) + _ITEM_COST)
            if best is None or cost < best[0]:
                best = (cost, (th, tw))
    return best[1]


def blocks_for(H_out: int, W_out: int, C_in: int, C: int, kernel: int, stride: int,
               dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(TILE_H, TILE_W, BLOCK_C, BLOCK_K): output pixels and expanded channels per work item,
    input channels per expand step: 64 only for 3x3 kernels over whole steps of 64, else 32
    (a partial last step of 64, or the 25 taps' loads beside one, spill on sm_90: B2's 88 and
    B7's 160 input channels in python -m fastmbconv.kernel_report)."""
    block_k = min(64 if kernel == 3 and C_in % 64 == 0 else 32, max(16, next_pow2(C_in)))
    if interpreting():  # ~30 ms per program: few, large items
        return next_pow2(H_out), next_pow2(W_out), min(next_pow2(C), 128), max(16, min(next_pow2(C_in), 128))
    tile_h, tile_w = tile_for(H_out, W_out, kernel, stride)
    # 64 expanded channels per item halve the per-item work per output (set-up, the SE sums'
    # reduction) where few channels are masked off. Only for fp16/bf16 3x3 kernels with 32-channel
    # expand steps and tiles at most 16 wide: fp32, 5x5 taps, 64-channel steps (B5's 64 -> 384)
    # and 32-wide tiles (B2's and B3's 17x17 and 19x19 maps) spill at 64 on sm_90
    block_c = 32
    if dtype != torch.float32 and kernel == 3 and block_k == 32 and tile_w <= 16:
        block_c = min((32, 64), key=lambda bc: -(-C // bc) * (bc + _ITEM_CHANNELS))
    return tile_h, tile_w, block_c, block_k


def geometry(H_out: int, W_out: int, C_in: int, C: int, kernel: int, stride: int, batch: int, dtype: torch.dtype):
    """The launch geometry: (tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, items)."""
    tile_h, tile_w, block_c, block_k = blocks_for(H_out, W_out, C_in, C, kernel, stride, dtype)
    halo_h, halo_w = (tile_h - 1) * stride + kernel, (tile_w - 1) * stride + kernel
    tiles = -(-H_out // tile_h) * -(-W_out // tile_w)
    return tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, batch * tiles * -(-C // block_c)


def halo_chunk(halo: int) -> int:
    """Halo pixels per expand product: :data:`CHUNK`, or the whole halo under the interpreter."""
    return max(16, next_pow2(halo)) if interpreting() else CHUNK


def persistent_programs(device: torch.device, items: int) -> int:
    """Two programs per SM (the registers of two 4-warp programs fill an SM, and every program
    owns two scratch slots); one per item under the interpreter. On ``meta`` (the kernel
    report) an H100's 132 SMs."""
    if interpreting():
        return items
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    return max(1, min(items, 2 * sms))


def alloc_scratch(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The programs' halo slots (fp32, uninitialised: every item writes its slot before reading)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def expand_dwconv_launch(x, w_expand, b_expand, w_dw, scale, shift, padding, stride=1, act="silu",
                         valid_hw=None, pad_tl=None):
    """Check, allocate and launch. Returns (out, partial_sums) as :func:`.dwconv_bn_act` does."""
    k, padding, H_out, W_out, C = _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act,
                                             valid_hw, pad_tl)
    N, C_in, H, W = x.shape
    tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, items = geometry(H_out, W_out, C_in, C, k, stride, N,
                                                                               x.dtype)
    out = empty_like_format(x, (N, C, H_out, W_out))
    partials = torch.empty((N, tiles, C), dtype=torch.float32, device=x.device)
    if N == 0 or C == 0:
        return out, partials
    check_valid_sizes(OP, valid_hw, H, W)
    programs = persistent_programs(x.device, items)
    scratch = alloc_scratch((programs, 2, halo_h * halo_w, block_c), x.device)
    ragged = valid_hw is not None
    launch(OP, _expand_dwconv_kernel, (programs,), dict(
        x_ptr=x, we_ptr=w_expand.reshape(C, C_in).contiguous(), be_ptr=b_expand.contiguous(), wd_ptr=w_dw.contiguous(),
        scale_ptr=scale.contiguous(), shift_ptr=shift.contiguous(), out_ptr=out, part_ptr=partials, scratch_ptr=scratch,
        valid_ptr=valid_hw.contiguous() if ragged else scale, padtl_ptr=pad_tl.contiguous() if ragged else scale,
        C=C, H=H, W=W, H_out=H_out, W_out=W_out, items=items, sxn=x.stride(0), sxh=x.stride(2),
        son=out.stride(0), soh=out.stride(2), sow=out.stride(3), pad_top=padding[0], pad_left=padding[2],
    ), dict(
        C_IN=C_in, SXC=x.stride(1), SXW=x.stride(3), SOC=out.stride(1), TILES_W=-(-W_out // tile_w), TILES=tiles,
        C_BLOCKS=-(-C // block_c), STRIDE=stride, KSIZE=k, ACT=ACT_CODES[act], FAST_MATH=not interpreting(),
        RAGGED=ragged,
        INT64=needs_int64(x, out), DOT_FP32=interpreting() or x.dtype == torch.float32,
        TILE_H=tile_h, TILE_W=tile_w, HALO_W=halo_w, HALO=halo_h * halo_w, CHUNK=halo_chunk(halo_h * halo_w),
        BLOCK_C=block_c, BLOCK_K=block_k, num_warps=4,
    ), on=x)
    return out, partials


@torch.library.custom_op("fastmbconv::expand_dwconv", mutates_args=())
def _expand_dwconv_op(
    x: torch.Tensor, w_expand: torch.Tensor, b_expand: torch.Tensor, w_dw: torch.Tensor, scale: torch.Tensor,
    shift: torch.Tensor, padding: list[int], stride: int, act: str, valid_hw: Optional[torch.Tensor],
    pad_tl: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    return expand_dwconv_launch(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act, valid_hw, pad_tl)


@_expand_dwconv_op.register_fake
def _(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act, valid_hw, pad_tl):
    k, padding, H_out, W_out, C = _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act,
                                             valid_hw, pad_tl)
    tiles = geometry(H_out, W_out, x.shape[1], C, k, stride, x.shape[0], x.dtype)[6]
    return empty_like_format(x, (x.shape[0], C, H_out, W_out)), x.new_empty((x.shape[0], tiles, C),
                                                                             dtype=torch.float32)


def expand_dwconv(x, w_expand, b_expand, w_dw, scale, shift, padding: Sequence[int], stride=1, act="silu",
                  valid_hw=None, pad_tl=None):
    """``act(conv_dw(silu(x @ w_expand^T + b_expand)) * scale + shift)`` and its per-tile sums.

    ``w_expand`` (C, C_in) in x's dtype with BN folded in, ``b_expand`` (C,) fp32; ``w_dw``
    (k*k, C) fp32 taps-major; ``scale``/``shift`` (C,) fp32 (the depthwise conv's BN).
    ``padding`` (top, bottom, left, right) and the ragged ``valid_hw``/``pad_tl`` as in
    :func:`.dwconv_bn_act`, whose (out, partial_sums) this returns."""
    return call_op(torch.ops.fastmbconv.expand_dwconv, expand_dwconv_launch, x, w_expand, b_expand, w_dw,
                   scale, shift, [int(p) for p in padding], int(stride), act, valid_hw, pad_tl)


def expand_dwconv_ref(x, w_expand, b_expand, w_dw, scale, shift, padding, stride=1, act="silu", valid_hw=None,
                      pad_tl=None, compute_dtype=torch.float32, expanded_dtype=None):
    """Pure-torch twin: the expand conv (einsum, SiLU), rounded to ``expanded_dtype`` (the dtype
    the separate kernels would store it in; default none), then :func:`.dwconv_bn_act_ref`;
    returns (out, per-image sums)."""
    C, C_in = w_expand.shape[0], w_expand.shape[1]
    e = torch.einsum("nchw,oc->nohw", x.to(compute_dtype), w_expand.reshape(C, C_in).to(compute_dtype))
    e = activation_ref(e + b_expand.to(compute_dtype)[None, :, None, None], "silu")
    if expanded_dtype is not None:
        e = e.to(expanded_dtype).to(compute_dtype)
    return dwconv_bn_act_ref(e, w_dw, scale, shift, padding, stride, act, with_pool=True, valid_hw=valid_hw,
                             pad_tl=pad_tl, compute_dtype=compute_dtype)
