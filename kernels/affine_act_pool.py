"""Per-channel affine + activation in place, with the SE pool's per-tile sums: the epilogue of a
depthwise conv that cuDNN computed.

Why: on an H200 (``benchmarks/results/h200/``) cuDNN's NHWC depthwise kernel moved its bytes
several times faster than the Triton depthwise kernels, but eager PyTorch then spends a pass
each on BN, SiLU and the SE mean. This kernel folds those three into one read and one write of
the conv's output: ``y = act(y * scale + shift)`` with fp32 ``scale``/``shift`` (BN folded),
and each program's output summed per channel, in the (N, T, C) fp32 layout that
:mod:`.dwconv_bn_act` writes, so the SE gate kernel takes either.

Each program covers ``BLOCK_P`` pixels of one image (a tile) by ``BLOCK_C`` channels; the sums
are in a fixed order (no atomics). Offsets inside an image are 32-bit unless an image spans
2^31 elements; the image's base offset is always 64-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import call_op, launch
from ._math import affine_activation
from ._utils import (
    ACT_CODES,
    activation_ref,
    check_activation,
    check_grid,
    check_no_overlap,
    check_tensor,
    interpreting,
    needs_int64,
    next_pow2,
    refuse_grad,
    silu_math,
)

OP = "affine_act_pool"


@triton.jit
def _affine_act_pool_kernel(
    y_ptr, scale_ptr, shift_ptr, part_ptr, C, HW, W, tiles_per_image, syn, syc, syh, syw,
    ACT: tl.constexpr, MATH: tl.constexpr, WITH_POOL: tl.constexpr, INT64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # image * tiles_per_image + tile
    n = pid // tiles_per_image
    p = (pid % tiles_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if INT64:
        p = p.to(tl.int64)
        c = c.to(tl.int64)
    ok = (p < HW)[:, None] & (c < C)[None, :]
    off = n.to(tl.int64) * syn + ((p // W) * syh + (p % W) * syw)[:, None] + (c * syc)[None, :]
    y = tl.load(y_ptr + off, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + c, mask=c < C, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c < C, other=0.0)
    y = affine_activation(y, scale[None, :], shift[None, :], ACT, MATH)
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=ok)
    if WITH_POOL:  # fp32 sums before the output's rounding, as the depthwise kernel's
        part = tl.sum(tl.where(ok, y, 0.0), axis=0)
        tl.store(part_ptr + pid.to(tl.int64) * C + c, part, mask=c < C)


def _check_args(y, scale, shift, act):
    check_tensor(OP, "y", y, ndim=4)
    check_no_overlap(OP, "y", y)
    C = y.shape[1]
    for name, t in (("scale", scale), ("shift", shift)):
        check_tensor(OP, name, t, ndim=1, dtypes=(torch.float32,), device=y.device)
        if t.shape[0] != C:
            raise ValueError(f"{OP}: {name} must have {C} entries (one per channel), got {t.shape[0]}")
    check_activation(OP, "act", act)


def blocks_for(HW: int, C: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): 4096 elements a program on a GPU (whole channels_last rows of up to
    64 channels, so loads and stores are contiguous); few large blocks under the interpreter."""
    block_c = min(64, max(16, next_pow2(C))) if not interpreting() else min(4096, max(16, next_pow2(C)))
    budget = 4096 if not interpreting() else 65536
    return max(16, min(next_pow2(HW), budget // block_c)), block_c


def affine_act_pool_launch(y, scale, shift, act="silu", with_pool=False):
    """Check and launch on ``y`` in place. Returns (partial_sums,): (N, T, C) fp32, each image's
    output summed over each of its T tiles, or an empty tensor without ``with_pool``."""
    _check_args(y, scale, shift, act)
    if not y.is_inference():  # y is written in place: autograd must see it changed
        torch.autograd.graph.increment_version(y)
    N, C, H, W = y.shape
    block_p, block_c = blocks_for(H * W, C)
    tiles = triton.cdiv(H * W, block_p)
    partials = torch.empty((N, tiles, C) if with_pool else (0,), dtype=torch.float32, device=y.device)
    if y.numel() == 0:
        if with_pool:
            partials.zero_()
        return partials
    grid = (N * tiles, triton.cdiv(C, block_c))
    check_grid(OP, grid, (f"{N} images of {tiles} tiles", f"{C} channels"))
    launch(OP, _affine_act_pool_kernel, grid, dict(
        y_ptr=y, scale_ptr=scale.contiguous(), shift_ptr=shift.contiguous(),
        part_ptr=partials if with_pool else scale, C=C, HW=H * W, W=W, tiles_per_image=tiles,
        **dict(zip(("syn", "syc", "syh", "syw"), y.stride())),
    ), dict(ACT=ACT_CODES[act], MATH=silu_math(y.dtype, y.device), WITH_POOL=with_pool,
            INT64=needs_int64(y), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4), on=y)
    return partials


@torch.library.custom_op("fastmbconv::affine_act_pool", mutates_args=("y",))
def _affine_act_pool_op(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str,
                        with_pool: bool) -> torch.Tensor:
    return affine_act_pool_launch(y, scale, shift, act, with_pool)


@_affine_act_pool_op.register_fake
def _(y, scale, shift, act, with_pool):
    _check_args(y, scale, shift, act)
    N, C, H, W = y.shape
    tiles = -(-(H * W) // blocks_for(H * W, C)[0])
    return y.new_empty((N, tiles, C) if with_pool else (0,), dtype=torch.float32)


def affine_act_pool(y, scale, shift, act="silu", with_pool=False):
    """``y = act(y * scale + shift)`` in place, per channel; returns ``y`` or, with ``with_pool``,
    ``(y, partial_sums)`` with ``partial_sums`` (N, T, C) fp32 (per image, the output summed over
    each of its T tiles; ``partial_sums.sum(1)`` are the per-image sums). Inference only."""
    refuse_grad(OP, "this in-place pass", "autograd would see neither its affine nor its activation", y, scale, shift)
    partials = call_op(torch.ops.fastmbconv.affine_act_pool, affine_act_pool_launch, y, scale, shift, act,
                       bool(with_pool))
    return (y, partials) if with_pool else y


def affine_act_pool_ref(y, scale, shift, act="silu", with_pool=False, compute_dtype=torch.float32):
    """Pure-torch twin in ``compute_dtype`` (not in place); with ``with_pool`` it returns (out,
    per-image sums (N, C))."""
    C = y.shape[1]
    out = activation_ref(y.to(compute_dtype) * scale.to(compute_dtype).view(1, C, 1, 1)
                         + shift.to(compute_dtype).view(1, C, 1, 1), act)
    return (out, out.sum((2, 3))) if with_pool else out
