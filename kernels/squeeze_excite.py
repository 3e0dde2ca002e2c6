"""Squeeze-excite gate from the depthwise kernel's per-tile sums, for the whole batch in one launch.

The depthwise epilogue already wrote each image's output summed per tile and channel, so SE
never re-reads the activation: this kernel adds the tiles up in a fixed order (no atomics:
bitwise repeatable for the given sums), takes the mean, and computes the (N, C) fp32 gate
``sigmoid(W_e @ silu(W_r @ mean + b_r) + b_e)`` that the project conv applies in its prologue.

Each program takes 16 images, so each weight tile it loads serves them all, and both FCs are
small matrix products (on the tensor cores when the weights are fp16/bf16). The grid's second
axis splits the gate channels into groups, so a small batch still spreads over many programs;
each group recomputes its images' small hidden vector (the reduce FC needs all C means).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import call_op, launch
from ._math import round_to_bf16
from ._utils import FLOAT_DTYPES, check_tensor, dot_fp32, interpreting, next_pow2, round_bf16, shared_limits

OP = "squeeze_excite_gate"
# The reduced vector is held whole (one block of next_pow2(R)): with 64-channel gate tiles on
# sm_90, R = 512 took 148-164 KiB of shared memory, 1024 about 300 KiB, past the 227 KiB a
# program may have.
MAX_REDUCED = 512
SMALL_SHARED = 96 * 1024  # a program's shared memory below sm_86's 99 KiB (sm_75: 64 KiB)


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr, ROUND_BF16: tl.constexpr):
    if DOT_FP32:
        a = a.to(tl.float32)
        if ROUND_BF16:  # fp32 means and hidden vector, cast to bf16 on a GPU
            a = round_to_bf16(a)
        return tl.dot(a, b.to(tl.float32), input_precision="ieee")
    return tl.dot(a.to(b.dtype), b)


@triton.jit
def _se_gate_kernel(
    part_ptr, count_ptr, wr_ptr, br_ptr, we_ptr, be_ptr, gate_ptr,
    N, C, R, T, inv_count, gate_groups,
    HAS_COUNT: tl.constexpr, DOT_FP32: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    rows = offs_n.to(tl.int64) * T  # each image's first partial-sum row

    # hidden = silu(mean @ W_r^T + b_r) for BLOCK_N images at once, so the weights serve them all.
    # The sums become means before the dot: in fp16 a whole map's sum passes 65504 (a mean
    # activation of 5 at 112x112) and the dot's input would be inf
    if HAS_COUNT:
        inv = 1.0 / tl.maximum(tl.load(count_ptr + offs_n, mask=n_ok, other=1.0).to(tl.float32), 1.0)
    hidden = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    # not pipelined: where T is 1 Triton drops the tile loop and would keep 3 stages of the weight
    # tile in shared memory, 152 KiB in fp32 at BLOCK_R 128, past sm_86's and sm_89's 99 KiB a program
    for c0 in tl.range(0, C, BLOCK_C, num_stages=1):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        ok = n_ok[:, None] & c_ok[None, :]
        # BLOCK_T of the depthwise kernel's tiles per step, in a fixed order: one tile a step left
        # the loads' latency exposed (on the H200, 196 tiles of B0's block 0 took 119 µs)
        sums = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        offs_t = tl.arange(0, BLOCK_T)
        for t0 in tl.range(0, T, BLOCK_T, num_stages=1, loop_unroll_factor=1):
            t = t0 + offs_t
            ptrs = part_ptr + ((rows[:, None] + t[None, :]) * C)[:, :, None] + offs_c[None, None, :]
            step = tl.load(ptrs, mask=ok[:, None, :] & (t < T)[None, :, None], other=0.0)
            sums += tl.sum(step, axis=1)
        w_r = tl.load(wr_ptr + offs_r[None, :] * C + offs_c[:, None], mask=c_ok[:, None] & r_ok[None, :], other=0.0)
        hidden += _dot(sums * (inv[:, None] if HAS_COUNT else inv_count), w_r, DOT_FP32, ROUND_BF16)
    hidden += tl.load(br_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)[None, :]
    hidden = tl.where(r_ok[None, :], hidden * tl.sigmoid(hidden), 0.0)

    # gate = sigmoid(hidden @ W_e^T + b_e), this program's share of the channel blocks
    for g0 in range(tl.program_id(1) * BLOCK_G, C, gate_groups * BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        g_ok = offs_g < C
        w_e = tl.load(we_ptr + offs_g[None, :] * R + offs_r[:, None], mask=r_ok[:, None] & g_ok[None, :], other=0.0)
        g = _dot(hidden, w_e, DOT_FP32, ROUND_BF16)
        g += tl.load(be_ptr + offs_g, mask=g_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(gate_ptr + offs_n.to(tl.int64)[:, None] * C + offs_g[None, :], tl.sigmoid(g),
                 mask=n_ok[:, None] & g_ok[None, :])


def _check_args(partials, w_reduce, b_reduce, w_expand, b_expand, count, hw):
    check_tensor(OP, "partials", partials, ndim=3, dtypes=(torch.float32,))
    N, T, C = partials.shape
    dev = partials.device
    check_tensor(OP, "w_reduce", w_reduce, dtypes=FLOAT_DTYPES, device=dev)
    check_tensor(OP, "w_expand", w_expand, dtypes=FLOAT_DTYPES, device=dev)
    if w_reduce.ndim not in (2, 4) or w_reduce.shape[1] != C or w_reduce.numel() != w_reduce.shape[0] * C:
        raise ValueError(f"{OP}: w_reduce must be (R, {C}) or (R, {C}, 1, 1), got {tuple(w_reduce.shape)}")
    R = w_reduce.shape[0]
    if w_expand.ndim not in (2, 4) or tuple(w_expand.shape[:2]) != (C, R) or w_expand.numel() != C * R:
        raise ValueError(f"{OP}: w_expand must be ({C}, {R}) or ({C}, {R}, 1, 1), got {tuple(w_expand.shape)}")
    for name, t, size in (("b_reduce", b_reduce, R), ("b_expand", b_expand, C)):
        check_tensor(OP, name, t, ndim=1, dtypes=FLOAT_DTYPES, device=dev)
        if t.shape[0] != size:
            raise ValueError(f"{OP}: {name} must have {size} entries, got {t.shape[0]}")
    if count is not None:
        check_tensor(OP, "count", count, ndim=1, dtypes=None, device=dev)
        if count.shape[0] != N:
            raise ValueError(f"{OP}: count must have {N} entries (one per sample), got {count.shape[0]}")
    elif hw < 1:
        raise ValueError(f"{OP}: hw (pixels per sample) must be >= 1 when no per-sample count is given, got {hw}")
    if R > MAX_REDUCED:
        raise ValueError(f"{OP}: reduced width {R} is larger than this kernel supports ({MAX_REDUCED}; "
                         f"EfficientNet's widest is 160)")
    return N, T, C, R


def squeeze_excite_gate_launch(partials, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1):
    N, T, C, R = _check_args(partials, w_reduce, b_reduce, w_expand, b_expand, count, hw)
    gate = torch.empty((N, C), dtype=torch.float32, device=partials.device)
    if N == 0 or C == 0:
        return gate
    block_n, block_r = 16, max(16, next_pow2(R))
    lowp = w_reduce.dtype if w_reduce.dtype == w_expand.dtype and w_reduce.dtype != torch.float32 else None
    if interpreting():  # ~30 ms per program: few, large blocks (Triton's limit: 2**20 elements)
        block_n, block_c, block_g = max(16, min(next_pow2(N), 64)), max(16, min(next_pow2(C), 4096, 2**20 // block_r)), None
    elif block_r <= 128 or lowp is not None:
        # the reduce FC's (BLOCK_C, BLOCK_R) weight tile fits the registers up to 128 x 128. The
        # gate loop keeps 3 stages of its (BLOCK_R, BLOCK_G) tile in shared memory: 64 wide, at
        # the widest reduced width they would pass sm_86's and sm_89's 99 KiB a program
        block_c, block_g = (128 if block_r <= 128 else 64), (64 if block_r <= 256 else 16)
    else:  # fp32 dots run as FMAs: past 128 reduced channels, 64-wide tiles spill (B6's, B7's 6.x);
        # 16-channel gate tiles: 32 spilled 8 B with triton 3.7 (16 compiles to 168 registers, as
        # 32 does with 3.6 and 3.9, and models the same time)
        block_c, block_g = 16, 16
    block_g = block_g or block_c
    if shared_limits(partials.device)[1] < SMALL_SHARED:  # a T4's 64 KiB a program: half the weight tiles
        # (there fp32's 128 x 128 tiles take 72 KiB, fp16's 256 x 64 80 KiB)
        block_c, block_g = max(16, block_c // 2), max(16, block_g // 2)
    # tiles summed per step: up to 4096 partial sums in registers (32 a thread) where the reduced
    # width leaves room (at most 64; wider, the weight tiles fill the registers: B7's spilled, and
    # with triton 3.6 twice that spilled on B2-B7's 1152-1248-channel blocks)
    block_t = min(next_pow2(T), max(1, 4096 // (block_n * block_c)), 8) if block_r <= 64 else 1
    image_blocks, gate_blocks = triton.cdiv(N, block_n), triton.cdiv(C, block_g)
    # enough programs to spread over the GPU; each recomputes its images' hidden vector
    groups = max(1, min(gate_blocks, triton.cdiv(128, image_blocks)))
    partials = partials.contiguous()
    launch(OP, _se_gate_kernel, (image_blocks, groups), dict(
        part_ptr=partials, count_ptr=count.contiguous() if count is not None else partials,
        wr_ptr=w_reduce.reshape(R, C).contiguous(), br_ptr=b_reduce.contiguous(),
        we_ptr=w_expand.reshape(C, R).contiguous(), be_ptr=b_expand.contiguous(), gate_ptr=gate,
        N=N, C=C, R=R, T=T, inv_count=1.0 / max(hw, 1), gate_groups=groups,
    ), dict(HAS_COUNT=count is not None, DOT_FP32=lowp is None or dot_fp32(lowp),
            ROUND_BF16=lowp is not None and round_bf16(lowp), BLOCK_N=block_n,
            BLOCK_C=block_c, BLOCK_R=block_r, BLOCK_G=block_g, BLOCK_T=block_t, num_warps=4), on=partials)
    return gate


@torch.library.custom_op("fastmbconv::squeeze_excite_gate", mutates_args=())
def _se_gate_op(
    partials: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor,
    w_expand: torch.Tensor, b_expand: torch.Tensor, count: Optional[torch.Tensor], hw: int,
) -> torch.Tensor:
    return squeeze_excite_gate_launch(partials, w_reduce, b_reduce, w_expand, b_expand, count, hw)


@_se_gate_op.register_fake
def _(partials, w_reduce, b_reduce, w_expand, b_expand, count, hw):
    N, _, C, _ = _check_args(partials, w_reduce, b_reduce, w_expand, b_expand, count, hw)
    return partials.new_empty((N, C))


def squeeze_excite_gate(partials, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1):
    """(N, C) fp32 gate from (N, T, C) fp32 partial sums (T tiles per image; a (N, C) tensor of
    plain sums is taken as T = 1). The mean divides by ``count`` (N,) per sample if given
    (ragged batches), else by ``hw``."""
    if isinstance(partials, torch.Tensor) and partials.ndim == 2:
        partials = partials[:, None]
    return call_op(torch.ops.fastmbconv.squeeze_excite_gate, squeeze_excite_gate_launch,
                   partials, w_reduce, b_reduce, w_expand, b_expand, count, int(hw))


def squeeze_excite_gate_ref(partials, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1,
                            compute_dtype=torch.float32):
    """Pure-torch twin."""
    s = partials.to(compute_dtype)
    s = s.sum(1) if s.ndim == 3 else s
    C, R = s.shape[1], w_reduce.shape[0]
    mean = s / (count.to(compute_dtype).clamp_min(1)[:, None] if count is not None else hw)
    hidden = F.silu(mean @ w_reduce.reshape(R, C).to(compute_dtype).t() + b_reduce.to(compute_dtype))
    return torch.sigmoid(hidden @ w_expand.reshape(C, R).to(compute_dtype).t() + b_expand.to(compute_dtype))
