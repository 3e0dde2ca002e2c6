"""The expand 1x1 and the depthwise kxk of an MBConv block in one kernel: the expanded tensor,
the block's largest, never goes to HBM.

Each work item is one output tile of one image for ``BLOCK_C`` expanded channels. The tile is
``TILE_H`` x ``TILE_W`` pixels of any size (so that tiles divide the map), held as a flat row of
``PIXELS`` slots; :mod:`._expand_dw_tiles` chooses it per layer. The item:

1. computes the expand conv (folded BN, bias, SiLU) over the tile's input halo with ``tl.dot``,
   in products of :data:`._expand_dw_tiles.CHUNK` halo pixels and up to two smaller ones,
   zero outside the image (the depthwise conv's padding);
2. stores it to a scratch slot of the program's own, in rows of a pitch that is a power of two
   where that wastes little;
3. after a barrier, runs the depthwise taps from shifted windows of the slot (registers cannot
   shift) at constant offsets, with no bounds checks;
4. applies the folded BN and SiLU, stores the output and the per-tile SE sums, as
   :mod:`.dwconv_bn_act` does.

The taps come in the two variants of :mod:`.dwconv_bn_act`, picked by the weights' layout:

- (k*k, C) fp32 (``taps_major``): fp32 FMAs from a halo kept in fp32, never rounded;
- (k*k, C, 16) fp16/bf16 (``taps_diag``, what the fused model folds): the halo is stored in
  the activations' dtype (rounded, as the separate path stores the expanded tensor), and each
  tap is a batched (pixels x 16) @ (16 x 16) dot against the tap's diagonal weights.

Either may have its rows zero-padded to whole channel blocks
(:func:`._expand_dw_tiles.pad_taps`), which lets the weights load without a mask.

The grid is persistent, about two programs per SM. Each program keeps one channel block and
walks the batch's tiles, so what depends only on the block loads once: with tensor cores (fp16/
bf16) the expand's B tiles and the taps' diagonal blocks, into shared memory (fp32's FMA
products hold their operands in registers and load them per step). The programs of one tile
have consecutive ids and run together, so its input halo comes from HBM once and from L2 for the
other channel blocks. The halo's per-pixel rows, columns and offsets are computed once too.

Where the slots live: global scratch, not shared memory. Each program has two slots used in
turn. So the scratch is a few MiB that every item rewrites: it stays in L2, and mostly in the
SM's L1, which also serves the taps' overlapping reads.
Triton's ``tl`` language has no shared-memory allocation. The installed Triton's Gluon dialect
does (``gl.allocate_shared_memory``), but Gluon kernels need hand-written layouts per
architecture and cannot run under the interpreter, so such an op would have no CPU tests.

Supported: both padding conventions, strides 1 and 2, kernels 3 and 5, ragged batches (each
image's valid size and (top, left) padding), fp32/fp16/bf16 inputs with fp32 accumulation, and
64-bit offsets when an image, with the window's reach past its edges, spans 2^31 elements.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._expand_dw_tiles import (
    bias_columns,
    blocks_for,
    halo_chunks,
    halo_pitch,
    halo_shape,
    persistent_programs,
    pixel_slots,
    shared_budget,
    taps_group,
    taps_split,
)
from ._launch import call_op, launch
from ._expand_dw_halo import expand_chunk, expand_weights, halo_pixels
from ._math import affine_activation, group_channels, image_extent
from ._utils import (
    ACT_CODES,
    activation_ref,
    check_1x1_weight,
    check_conv_geometry,
    check_ragged_args,
    check_tensor,
    check_valid_sizes,
    dot_fp32,
    empty_like_format,
    needs_int64,
    round_bf16,
    silu_math,
)
from .dwconv_bn_act import dwconv_bn_act_ref

OP = "expand_dwconv"


@triton.jit
def _tap_weights(w_tap0, w_ok, t, TAP_STRIDE: tl.constexpr, WD_EVEN: tl.constexpr):
    """Tap ``t``'s weights of the item's channel block; rows padded to whole channel blocks
    (``WD_EVEN``) load without a mask."""
    if WD_EVEN:
        return tl.load(w_tap0 + t * TAP_STRIDE)
    return tl.load(w_tap0 + t * TAP_STRIDE, mask=w_ok, other=0.0)


@triton.jit
def _expand_dwconv_kernel(
    x_ptr, we_ptr, be_ptr, wd_ptr, scale_ptr, shift_ptr, out_ptr, part_ptr, scratch_ptr, valid_ptr, padtl_ptr,
    C, H, W, H_out, W_out, tiles_all, son, soh, sow, pad_top, pad_left,
    C_IN: tl.constexpr, SXN: tl.constexpr, SXH: tl.constexpr, SXC: tl.constexpr, SXW: tl.constexpr,
    SOC: tl.constexpr, TILES_W: tl.constexpr,
    TILES: tl.constexpr, C_BLOCKS: tl.constexpr, STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr,
    MATH: tl.constexpr, RAGGED: tl.constexpr, INT64: tl.constexpr, DOT_FP32: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, PIXELS: tl.constexpr, HALO_W: tl.constexpr,
    HALO_PITCH: tl.constexpr, HALO: tl.constexpr,
    CHUNK: tl.constexpr, MAIN_CHUNKS: tl.constexpr, TAIL_A: tl.constexpr, TAIL_B: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, WD_STRIDE: tl.constexpr, WD_EVEN: tl.constexpr,
    MMA: tl.constexpr, ROUND_BF16: tl.constexpr, BIAS_COLS: tl.constexpr, SPLIT: tl.constexpr,
    WEIGHTS_ONCE: tl.constexpr, TAPS_GROUP: tl.constexpr,
):
    # The taps' tile is (GB, PB, CB): G groups of CB channels, each in SPLIT batches of PB =
    # PIXELS / SPLIT slots (batch b: group b // SPLIT, slots from (b % SPLIT) * PB; see
    # taps_split: a batch per warp). With MMA (fp16/bf16) CB = 16 and each tap is a
    # batched (PB, 16) @ (16, 16) dot against its diagonal weights (see dwconv_bn_act).
    CB: tl.constexpr = 16 if MMA else BLOCK_C
    G: tl.constexpr = BLOCK_C // CB
    GB: tl.constexpr = G * SPLIT
    PB: tl.constexpr = PIXELS // SPLIT
    pid = tl.program_id(0)
    offs_l = tl.arange(0, BLOCK_C)
    # each batch's channels: (GB, 1, CB) for taps and epilogue, (GB, CB, 1) for weight rows
    first = tl.arange(0, GB) // SPLIT * CB
    offs_g = first[:, None, None] + tl.arange(0, CB)[None, None, :]
    rows_g = first[:, None, None] + tl.arange(0, CB)[None, :, None]
    # the output tile as a flat row of PIXELS slots (TILE_H x TILE_W need not be powers of two:
    # a tile can fit the map); slots past the tile read the tile's last row and are not stored
    p = (tl.arange(0, GB) % SPLIT * PB)[:, None] + tl.arange(0, PB)[None, :]  # (GB, PB)
    p_ok = p < TILE_H * TILE_W
    pr = p // TILE_W
    pc = p % TILE_W
    # each pixel's first tap in the slot: the other taps sit at constant offsets (immediates)
    tap0 = (((tl.minimum(pr, TILE_H - 1) * STRIDE) * HALO_PITCH + pc * STRIDE) * BLOCK_C)[:, :, None] + offs_g
    if MMA:  # (k*k, WD_STRIDE, 16): tap t's 16 x 16 diagonal block of group g is contiguous
        w_off = rows_g * 16 + tl.arange(0, CB)[None, None, :]
    else:  # (k*k, WD_STRIDE)
        w_off = offs_g
    # a program's channel block is fixed, so its weights load once; the programs of one tile
    # (consecutive ids) run together and re-read its input halo from L2
    cb = pid % C_BLOCKS
    offs_e = cb * BLOCK_C + offs_l  # the expand's channels
    e_ok = offs_e < C
    offs_c = cb * BLOCK_C + offs_g  # the taps' and the epilogue's
    c_ok = offs_c < C
    bias = tl.load(be_ptr + offs_e, mask=e_ok, other=0.0)
    if MATH >= 2:
        bias = bias * 0.5
    # fp16/bf16: the expand's B tiles once, into shared memory for the tensor cores; fp32's FMA
    # products hold B in registers, where all the K steps' tiles would spill: loaded per step
    wb = expand_weights(we_ptr, offs_e, e_ok, bias, C_IN, BLOCK_K, BIAS_COLS, MATH >= 2) if WEIGHTS_ONCE else ()
    w_tap0 = wd_ptr + cb * (BLOCK_C * (16 if MMA else 1)) + w_off
    w_ok = (cb * BLOCK_C + rows_g < C) if MMA else c_ok
    taps = ()  # the tensor cores' diagonal blocks go to shared memory once; FMA taps load per item
    if MMA:
        for t in tl.static_range(KSIZE * KSIZE):
            taps = taps + (_tap_weights(w_tap0, w_ok, t, WD_STRIDE * 16, WD_EVEN),)
    scale = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)
    shift = tl.load(shift_ptr + offs_c, mask=c_ok, other=0.0)
    geo = ()  # each halo product's pixels
    for h0 in tl.static_range(0, MAIN_CHUNKS * CHUNK, CHUNK):
        geo = geo + (halo_pixels(h0, CHUNK, HALO, HALO_W, HALO_PITCH, SXH, SXW, INT64),)
    if TAIL_A > 0:
        geo = geo + (halo_pixels(MAIN_CHUNKS * CHUNK, TAIL_A, HALO, HALO_W, HALO_PITCH, SXH, SXW, INT64),)
    if TAIL_B > 0:
        geo = geo + (halo_pixels(MAIN_CHUNKS * CHUNK + TAIL_A, TAIL_B, HALO, HALO_W, HALO_PITCH, SXH, SXW, INT64),)
    buf = 0
    for t_all in range(pid // C_BLOCKS, tiles_all, tl.num_programs(0) // C_BLOCKS):
        rest = tl.cast(t_all, tl.int32)  # the interpreter's loop index is a Python int
        n = rest // TILES
        tile = rest % TILES
        # two slots per program, used in turn: an item's writes cannot race the previous
        # item's reads, so one barrier per item suffices
        slot = scratch_ptr + (pid * 2 + buf) * (HALO * BLOCK_C)
        buf = 1 - buf
        h_img, w_img, top, left = image_extent(valid_ptr, padtl_ptr, n, H, W, pad_top, pad_left, RAGGED)
        oh0 = (tile // TILES_W) * TILE_H
        ow0 = (tile % TILES_W) * TILE_W
        ih0 = oh0 * STRIDE - top
        iw0 = ow0 * STRIDE - left
        if INT64:
            x_img = x_ptr + (n.to(tl.int64) * SXN + ih0.to(tl.int64) * SXH + iw0.to(tl.int64) * SXW)
        else:
            x_img = x_ptr + n.to(tl.int64) * SXN + (ih0 * SXH + iw0 * SXW)

        # expand: the halo in chunks of CHUNK pixels, then up to two smaller ones for the rest
        for h0 in tl.static_range(0, MAIN_CHUNKS * CHUNK, CHUNK):
            expand_chunk(x_img, wb, we_ptr, offs_e, e_ok, bias, geo[h0 // CHUNK], offs_l, slot, ih0, iw0, h_img,
                         w_img, SXH, h0, CHUNK, HALO, HALO_W, HALO_PITCH, C_IN, SXC, SXW, BLOCK_C, BLOCK_K, INT64,
                         DOT_FP32, MATH, ROUND_BF16, BIAS_COLS, WEIGHTS_ONCE)
        if TAIL_A > 0:
            expand_chunk(x_img, wb, we_ptr, offs_e, e_ok, bias, geo[MAIN_CHUNKS], offs_l, slot, ih0, iw0, h_img,
                         w_img, SXH, MAIN_CHUNKS * CHUNK, TAIL_A, HALO, HALO_W, HALO_PITCH, C_IN, SXC, SXW, BLOCK_C,
                         BLOCK_K, INT64, DOT_FP32, MATH, ROUND_BF16, BIAS_COLS, WEIGHTS_ONCE)
        if TAIL_B > 0:
            expand_chunk(x_img, wb, we_ptr, offs_e, e_ok, bias, geo[MAIN_CHUNKS + (TAIL_A > 0)], offs_l, slot, ih0,
                         iw0, h_img, w_img, SXH, MAIN_CHUNKS * CHUNK + TAIL_A, TAIL_B, HALO, HALO_W, HALO_PITCH, C_IN,
                         SXC, SXW, BLOCK_C, BLOCK_K, INT64, DOT_FP32, MATH, ROUND_BF16, BIAS_COLS, WEIGHTS_ONCE)
        tl.debug_barrier()  # the whole halo is in the slot before any tap reads it

        # depthwise from the slot: no bounds to check, the halo holds the padding. Windows come in
        # groups of TAPS_GROUP, loaded before their products (fewer barriers); with tensor cores
        # a group's windows share shared memory with the kept weights (taps_group sizes it)
        dacc = tl.zeros((GB, PB, CB), dtype=tl.float32)
        for t0 in tl.static_range(0, KSIZE * KSIZE, TAPS_GROUP):
            group = ()  # a group's windows loaded before its products
            for t in tl.static_range(t0, t0 + TAPS_GROUP if t0 + TAPS_GROUP < KSIZE * KSIZE else KSIZE * KSIZE):
                group = group + (tl.load(slot + tap0 + ((t // KSIZE) * HALO_PITCH + t % KSIZE) * BLOCK_C),)
            for t in tl.static_range(t0, t0 + TAPS_GROUP if t0 + TAPS_GROUP < KSIZE * KSIZE else KSIZE * KSIZE):
                if MMA:
                    wv = taps[t]
                else:
                    wv = _tap_weights(w_tap0, w_ok, t, WD_STRIDE, WD_EVEN)
                xv = group[t - t0]
                if MMA:
                    if DOT_FP32:  # bf16 under the interpreter, whose bf16 dot is not the GPU's (see dot_fp32)
                        dacc = tl.dot(xv.to(tl.float32), wv.to(tl.float32), dacc, input_precision="ieee")
                    else:
                        dacc = tl.dot(xv, wv, dacc)
                else:
                    dacc += xv * wv

        oh = oh0 + pr
        ow = ow0 + pc
        c_off = offs_c * SOC
        if INT64:
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
            c_off = offs_c.to(tl.int64) * SOC
        y = affine_activation(dacc, scale, shift, ACT, MATH)
        in_map = (p_ok & (oh < H_out) & (ow < W_out))[:, :, None]  # the channels past C: sums not stored
        if RAGGED:
            h_valid = (h_img + STRIDE - 1) // STRIDE
            w_valid = (w_img + STRIDE - 1) // STRIDE
            y = tl.where(((oh < h_valid) & (ow < w_valid))[:, :, None], y, 0.0)
        out_off = (oh * soh + ow * sow)[:, :, None] + c_off
        tl.store(out_ptr + n.to(tl.int64) * son + out_off, y.to(out_ptr.dtype.element_ty), mask=in_map & c_ok)
        part = tl.sum(tl.where(in_map, y, 0.0), axis=1)  # (GB, CB)
        if SPLIT > 1:  # a group's batches, in a fixed order
            part = tl.sum(tl.reshape(part, (G, SPLIT, CB)), axis=1)
        sum_c = cb * BLOCK_C + group_channels(G, CB)[2]
        tl.store(part_ptr + rest.to(tl.int64) * C + sum_c, part, mask=sum_c < C)


def _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act, valid_hw, pad_tl):
    check_tensor(OP, "x", x, ndim=4)
    N, C_in, H, W = x.shape
    C = check_1x1_weight(OP, "w_expand", w_expand, x, "C")
    check_tensor(OP, "w_dw", w_dw, dtypes=None, device=x.device)
    mma = w_dw.ndim == 3 and w_dw.shape[-1] == 16
    k = round(w_dw.shape[0] ** 0.5)
    if w_dw.ndim not in (2, 3) or w_dw.ndim == 3 and not mma or w_dw.shape[1] < C or k * k != w_dw.shape[0] \
            or k not in (3, 5):
        raise ValueError(f"{OP}: w_dw must be (k*k, {C}) fp32 (dwconv_bn_act.taps_major) or (k*k, {C}, 16) in "
                         f"x's fp16/bf16 (dwconv_bn_act.taps_diag), k 3 or 5, rows optionally padded past {C} "
                         f"(pad_taps); got {tuple(w_dw.shape)}")
    want = x.dtype if mma else torch.float32
    if w_dw.dtype != want or mma and x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{OP}: w_dw of shape {tuple(w_dw.shape)} must be "
                        f"{'fp16 or bf16 like x' if mma else 'fp32'}, got {w_dw.dtype} with x {x.dtype}")
    for name, t in (("b_expand", b_expand), ("scale", scale), ("shift", shift)):
        check_tensor(OP, name, t, ndim=1, dtypes=(torch.float32,), device=x.device)
        if t.shape[0] != C:
            raise ValueError(f"{OP}: {name} must have {C} fp32 entries (one per expanded channel), got {t.shape[0]}")
    padding, H_out, W_out = check_conv_geometry(OP, H, W, k, stride, padding, act)
    check_ragged_args(OP, N, valid_hw, pad_tl, x.device)
    return k, padding, H_out, W_out, C, mma


def geometry(H_out: int, W_out: int, C_in: int, C: int, kernel: int, stride: int, batch: int, dtype: torch.dtype):
    """The launch geometry: (tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, items).
    Sizes may be symbolic (the fake implementation under dynamic shapes); the tile search needs
    the map's and channels' values, so the op specialises on them, as its kernel does (not on
    the batch)."""
    H_out, W_out, C_in, C, kernel, stride = (int(v) for v in (H_out, W_out, C_in, C, kernel, stride))
    tile_h, tile_w, block_c, block_k = blocks_for(H_out, W_out, C_in, C, kernel, stride, dtype)
    halo_h, halo_w = halo_shape(tile_h, tile_w, kernel, stride)
    tiles = -(-H_out // tile_h) * -(-W_out // tile_w)
    return tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, batch * tiles * -(-C // block_c)


def alloc_scratch(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The programs' halo slots (uninitialised: every item writes its slot before reading)."""
    return torch.empty(shape, dtype=dtype, device=device)


def expand_dwconv_launch(x, w_expand, b_expand, w_dw, scale, shift, padding, stride=1, act="silu",
                         valid_hw=None, pad_tl=None):
    """Check, allocate and launch. Returns (out, partial_sums) as :func:`.dwconv_bn_act` does."""
    k, padding, H_out, W_out, C, mma = _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act,
                                                  valid_hw, pad_tl)
    N, C_in, H, W = x.shape
    tile_h, tile_w, block_c, block_k, halo_h, halo_w, tiles, items = geometry(H_out, W_out, C_in, C, k, stride, N,
                                                                               x.dtype)
    out = empty_like_format(x, (N, C, H_out, W_out))
    partials = torch.empty((N, tiles, C), dtype=torch.float32, device=x.device)
    if N == 0 or C == 0:
        return out, partials
    check_valid_sizes(OP, valid_hw, H, W, pad_tl, k)
    c_blocks = -(-C // block_c)
    programs = c_blocks * persistent_programs(x.device, N * tiles, c_blocks)
    pitch = halo_pitch(halo_w)
    pixels = pixel_slots(tile_h, tile_w)
    # the halo in fp32 for the FMA taps, in the activations' dtype for the tensor-core ones
    scratch = alloc_scratch((programs, 2, halo_h * pitch, block_c), x.device, x.dtype if mma else torch.float32)
    ragged = valid_hw is not None
    chunk, main_chunks, tail_a, tail_b = halo_chunks(halo_h * pitch)
    w_dw = w_dw.contiguous()
    launch(OP, _expand_dwconv_kernel, (programs,), dict(
        x_ptr=x, we_ptr=w_expand.reshape(C, C_in).contiguous(), be_ptr=b_expand.contiguous(), wd_ptr=w_dw,
        scale_ptr=scale.contiguous(), shift_ptr=shift.contiguous(), out_ptr=out, part_ptr=partials, scratch_ptr=scratch,
        valid_ptr=valid_hw.contiguous() if ragged else scale, padtl_ptr=pad_tl.contiguous() if ragged else scale,
        C=C, H=H, W=W, H_out=H_out, W_out=W_out, tiles_all=N * tiles,
        son=out.stride(0), soh=out.stride(2), sow=out.stride(3), pad_top=padding[0], pad_left=padding[2],
    ), dict(
        # x's strides as constants: their factors of two are what lets the loads be vectors
        # (a row of 17 pixels of 344 channels is 8-aligned, which a runtime stride would not say)
        C_IN=C_in, SXN=x.stride(0), SXH=x.stride(2), SXC=x.stride(1), SXW=x.stride(3), SOC=out.stride(1),
        TILES_W=-(-W_out // tile_w), TILES=tiles,
        C_BLOCKS=c_blocks, STRIDE=stride, KSIZE=k, ACT=ACT_CODES[act],
        MATH=silu_math(x.dtype, x.device),
        RAGGED=ragged,
        INT64=needs_int64(x, out, window=k - 1), DOT_FP32=dot_fp32(x.dtype),
        TILE_H=tile_h, TILE_W=tile_w, PIXELS=pixels, HALO_W=halo_w, HALO_PITCH=pitch,
        HALO=halo_h * pitch,
        CHUNK=chunk, MAIN_CHUNKS=main_chunks, TAIL_A=tail_a, TAIL_B=tail_b, BLOCK_C=block_c, BLOCK_K=block_k,
        WD_STRIDE=w_dw.shape[1], WD_EVEN=w_dw.shape[1] >= -(-C // block_c) * block_c, MMA=mma,
        ROUND_BF16=mma and round_bf16(x.dtype), BIAS_COLS=bias_columns(C_in, block_k, x.dtype),
        SPLIT=taps_split(pixels, block_c, mma), WEIGHTS_ONCE=x.dtype != torch.float32,
        TAPS_GROUP=taps_group(pixels, block_c, block_k, C_in, k, mma, shared_budget(x.device)),
        # one stage: the item loop must never be software-pipelined (a prefetch of the next
        # item's scratch slot would run ahead of the barrier that orders its stores)
        num_warps=4, num_stages=1,
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
    k, padding, H_out, W_out, C, _ = _check_args(x, w_expand, b_expand, w_dw, scale, shift, padding, stride, act,
                                                 valid_hw, pad_tl)
    tiles = geometry(H_out, W_out, x.shape[1], C, k, stride, x.shape[0], x.dtype)[6]
    return empty_like_format(x, (x.shape[0], C, H_out, W_out)), x.new_empty((x.shape[0], tiles, C),
                                                                             dtype=torch.float32)


def expand_dwconv(x, w_expand, b_expand, w_dw, scale, shift, padding: Sequence[int], stride=1, act="silu",
                  valid_hw=None, pad_tl=None):
    """``act(conv_dw(silu(x @ w_expand^T + b_expand)) * scale + shift)`` and its per-tile sums.

    ``w_expand`` (C, C_in) in x's dtype with BN folded in, ``b_expand`` (C,) fp32; ``w_dw``
    (k*k, C) fp32 taps-major, its rows optionally padded past C
    (:func:`._expand_dw_tiles.pad_taps`: no masked loads); ``scale``/``shift`` (C,) fp32 (the
    depthwise conv's BN).
    ``padding`` (top, bottom, left, right) and the ragged ``valid_hw``/``pad_tl`` as in
    :func:`.dwconv_bn_act`, whose (out, partial_sums) this returns."""
    return call_op(torch.ops.fastmbconv.expand_dwconv, expand_dwconv_launch, x, w_expand, b_expand, w_dw,
                   scale, shift, [int(p) for p in padding], int(stride), act, valid_hw, pad_tl)


def expand_dwconv_ref(x, w_expand, b_expand, w_dw, scale, shift, padding, stride=1, act="silu", valid_hw=None,
                      pad_tl=None, compute_dtype=torch.float32, expanded_dtype=None):
    """Pure-torch twin: the expand conv (einsum, SiLU), rounded to ``expanded_dtype`` (the dtype
    the separate kernels would store it in; default none), then :func:`.dwconv_bn_act_ref`;
    returns (out, per-image sums). Padded taps rows (:func:`._expand_dw_tiles.pad_taps`) are
    read up to C."""
    C, C_in = w_expand.shape[0], w_expand.shape[1]
    w_dw = w_dw[:, :C]
    e = torch.einsum("nchw,oc->nohw", x.to(compute_dtype), w_expand.reshape(C, C_in).to(compute_dtype))
    e = activation_ref(e + b_expand.to(compute_dtype)[None, :, None, None], "silu")
    if expanded_dtype is not None:
        e = e.to(expanded_dtype).to(compute_dtype)
    return dwconv_bn_act_ref(e, w_dw, scale, shift, padding, stride, act, with_pool=True, valid_hw=valid_hw,
                             pad_tl=pad_tl, compute_dtype=compute_dtype)
