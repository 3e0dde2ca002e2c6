"""Squeeze-excite gate from pooled sums, for the whole batch in one launch.

The depthwise kernel's epilogue already produced per-(sample, channel) fp32 sums, so the SE
never re-reads the activation: this kernel only turns (N, C) sums into the (N, C) fp32 gate
``sigmoid(W_e @ silu(W_r @ mean + b_r) + b_e)`` that the project conv applies in its prologue.
One program per sample; both tiny FCs stay in registers.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import call_op, launch
from ._utils import FLOAT_DTYPES, check_tensor, interpreting, next_pow2

OP = "squeeze_excite_gate"


@triton.jit
def _se_gate_kernel(
    pool_ptr, count_ptr, wr_ptr, br_ptr, we_ptr, be_ptr, gate_ptr,
    C, R, inv_count,
    HAS_COUNT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    if HAS_COUNT:
        cnt = tl.load(count_ptr + n + tl.zeros((BLOCK_R,), dtype=tl.int64)).to(tl.float32)
        inv = 1.0 / tl.maximum(cnt, 1.0)
    else:
        inv = tl.zeros((BLOCK_R,), dtype=tl.float32) + inv_count

    # hidden[r] = silu(sum_c W_r[r, c] * mean[c] + b_r[r])
    hidden = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        s = tl.load(pool_ptr + n * C + offs_c, mask=c_mask, other=0.0)
        w = tl.load(wr_ptr + offs_r[:, None] * C + offs_c[None, :], mask=r_mask[:, None] & c_mask[None, :], other=0.0)
        hidden += tl.sum(w.to(tl.float32) * s[None, :], axis=1)
    hidden = hidden * inv + tl.load(br_ptr + offs_r, mask=r_mask, other=0.0).to(tl.float32)
    hidden = hidden * tl.sigmoid(hidden)
    hidden = tl.where(r_mask, hidden, 0.0)

    # gate[c] = sigmoid(sum_r W_e[c, r] * hidden[r] + b_e[c])
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        w = tl.load(we_ptr + offs_c[None, :] * R + offs_r[:, None], mask=r_mask[:, None] & c_mask[None, :], other=0.0)
        g = tl.sum(w.to(tl.float32) * hidden[:, None], axis=0)
        g = g + tl.load(be_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(gate_ptr + n * C + offs_c, tl.sigmoid(g), mask=c_mask)


def _check_args(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, hw):
    check_tensor(OP, "pool_sums", pool_sums, ndim=2, dtypes=(torch.float32,))
    N, C = pool_sums.shape
    dev = pool_sums.device
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
    if R > 4096:
        raise ValueError(f"{OP}: reduced width {R} is larger than this kernel supports (4096)")
    return N, C, R


def squeeze_excite_gate_launch(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1):
    N, C, R = _check_args(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, hw)
    gate = torch.empty((N, C), dtype=torch.float32, device=pool_sums.device)
    if N == 0 or C == 0:
        return gate
    block_r = max(16, next_pow2(R))
    budget = 65536 if interpreting() else 8192  # elements of one (R, C) weight tile
    block_c = max(16, min(next_pow2(C), budget // block_r))
    count = count.to(torch.float32).contiguous() if count is not None else None
    pool_sums = pool_sums.contiguous()
    launch(OP, _se_gate_kernel, (N,), dict(
        pool_ptr=pool_sums, count_ptr=count if count is not None else pool_sums,
        wr_ptr=w_reduce.reshape(R, C).contiguous(), br_ptr=b_reduce.contiguous(),
        we_ptr=w_expand.reshape(C, R).contiguous(), be_ptr=b_expand.contiguous(), gate_ptr=gate,
        C=C, R=R, inv_count=1.0 / max(hw, 1),
    ), dict(HAS_COUNT=count is not None, BLOCK_C=block_c, BLOCK_R=block_r, num_warps=4), on=pool_sums)
    return gate


@torch.library.custom_op("fastmbconv::squeeze_excite_gate", mutates_args=())
def _se_gate_op(
    pool_sums: torch.Tensor, w_reduce: torch.Tensor, b_reduce: torch.Tensor,
    w_expand: torch.Tensor, b_expand: torch.Tensor, count: Optional[torch.Tensor], hw: int,
) -> torch.Tensor:
    return squeeze_excite_gate_launch(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, hw)


@_se_gate_op.register_fake
def _(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, hw):
    N, C, _ = _check_args(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, hw)
    return pool_sums.new_empty((N, C))


def squeeze_excite_gate(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1):
    """(N, C) fp32 gate from (N, C) fp32 sums; the mean divides by ``count`` (N,) per sample
    if given (ragged batches), else by ``hw``."""
    return call_op(torch.ops.fastmbconv.squeeze_excite_gate, squeeze_excite_gate_launch,
                   pool_sums, w_reduce, b_reduce, w_expand, b_expand, count, int(hw))


def squeeze_excite_gate_ref(pool_sums, w_reduce, b_reduce, w_expand, b_expand, count=None, hw=1,
                            compute_dtype=torch.float32):
    """Pure-torch twin."""
    C = pool_sums.shape[1]
    R = w_reduce.shape[0]
    s = pool_sums.to(compute_dtype)
    mean = s / (count.to(compute_dtype).clamp_min(1)[:, None] if count is not None else hw)
    hidden = F.silu(mean @ w_reduce.reshape(R, C).to(compute_dtype).t() + b_reduce.to(compute_dtype))
    return torch.sigmoid(hidden @ w_expand.reshape(C, R).to(compute_dtype).t() + b_expand.to(compute_dtype))
