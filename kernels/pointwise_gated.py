"""1x1 conv as a GEMM over NHWC pixels, with the SE gate in the prologue and folded BN bias,
activation, residual or global-average-pool in the epilogue.

    out[n, o, h, w] = act(sum_c (x[n, c, h, w] * gate[n, c]) * W[o, c] + bias[o]) + residual[n, o, h, w]

Why: the SE gate, the project conv's BN and the residual add are each a full pass over an
activation in eager PyTorch; here they ride along with the GEMM's loads and stores. The same op
serves the expand conv (no gate, identity: the depthwise kernel applies SiLU on load), the
project conv (gate + residual) and the head conv (SiLU, and with ``pool_only`` it writes only
the (N, O) fp32 sums the classifier needs, never the head map).

The grid's last axis is the sample, so a tile's rows all belong to one image: the gate is one
row vector per tile and pool sums need one atomic add per (tile, channel) (or one plain store
per tile under ``torch.use_deterministic_algorithms(True)``, reduced afterwards).

:func:`choose_pointwise_impl` picks, per shape, between this Triton GEMM and a torch fallback
(``x * gate`` then cuBLAS matmul + bias + residual); see its docstring.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import call_op, launch, record_launch
from ._utils import (
    ACT_CODES,
    activation_ref,
    check_activation,
    check_tensor,
    deterministic_pool,
    empty_like_format,
    interpreting,
    next_pow2,
    use_autotune,
    valid_mask,
)

OP = "pointwise_gated"
MAX_GRID_Z = 65535


@triton.jit
def _pointwise_gated_kernel(
    x_ptr, w_ptr, bias_ptr, gate_ptr, res_ptr, out_ptr, pool_ptr, valid_ptr,
    K, O, H, W,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    srn, src, srh, srw,
    HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, POOL_ONLY: tl.constexpr,
    RAGGED: tl.constexpr, DOT_FP32: tl.constexpr, POOL_PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < H * W
    o_mask = offs_o < O
    row_h = (offs_m // W).to(tl.int64)
    row_w = (offs_m % W).to(tl.int64)
    x_rows = x_ptr + n * sxn + row_h * sxh + row_w * sxw

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(x_rows[:, None] + offs_k.to(tl.int64)[None, :] * sxc,
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptr + offs_o[None, :] * K + offs_k[:, None],
                    mask=k_mask[:, None] & o_mask[None, :], other=0.0)
        if HAS_GATE:
            g = tl.load(gate_ptr + n * K + offs_k, mask=k_mask, other=0.0)
            a = a.to(tl.float32) * g[None, :]
        if DOT_FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(w_ptr.dtype.element_ty), b, acc)

    y = acc + tl.load(bias_ptr + offs_o, mask=o_mask, other=0.0)[None, :]
    if ACT == 1:
        y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    mask2 = m_mask[:, None] & o_mask[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + n * srn + (row_h * srh + row_w * srw)[:, None] + offs_o.to(tl.int64)[None, :] * src,
                    mask=mask2, other=0.0)
        y = y + r.to(tl.float32)
    if POOL_ONLY:
        keep = m_mask
        if RAGGED:
            h_img = tl.load(valid_ptr + 2 * n)
            w_img = tl.load(valid_ptr + 2 * n + 1)
            keep = keep & (row_h < h_img) & (row_w < w_img)
        part = tl.sum(tl.where(keep[:, None] & o_mask[None, :], y, 0.0), axis=0)
        if POOL_PARTIAL:  # pool is (N, tiles, O): one row per pixel tile, summed afterwards
            row = n * tl.num_programs(0) + pid_m
            tl.store(pool_ptr + row * O + offs_o, part, mask=o_mask)
        else:
            tl.atomic_add(pool_ptr + n * O + offs_o, part, mask=o_mask)
    else:
        out_off = n * son + (row_h * soh + row_w * sow)[:, None] + offs_o.to(tl.int64)[None, :] * soc
        tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=mask2)


# GPU tiles to try, (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); pool sums are reset between
# benchmark runs because the pool epilogue accumulates them with atomics.
_GPU_CONFIGS = [
    (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3),
    (64, 32, 64, 4, 4), (128, 32, 64, 4, 3), (32, 64, 64, 4, 4),
]
_pointwise_gated_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
             for m, n, k, w, st in _GPU_CONFIGS],
    key=["K", "O", "H", "W", "HAS_GATE", "HAS_RES", "POOL_ONLY", "RAGGED"],
    reset_to_zero=["pool_ptr"],
)(_pointwise_gated_kernel)


def _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw):
    check_tensor(OP, "x", x, ndim=4)
    N, K, H, W = x.shape
    dev = x.device
    check_tensor(OP, "weight", weight, device=dev)
    if weight.dtype != x.dtype:
        raise TypeError(f"{OP}: weight dtype {weight.dtype} must match the input's {x.dtype}")
    if weight.ndim not in (2, 4) or weight.shape[1] != K or weight.numel() != weight.shape[0] * K:
        raise ValueError(f"{OP}: weight must be (O, {K}) or (O, {K}, 1, 1) for an input with {K} channels, "
                         f"got {tuple(weight.shape)}")
    O = weight.shape[0]
    check_tensor(OP, "bias", bias, ndim=1, dtypes=(torch.float32,), device=dev)
    if bias.shape[0] != O:
        raise ValueError(f"{OP}: bias must have {O} entries (fp32, one per output channel), got {bias.shape[0]}")
    if gate is not None:
        check_tensor(OP, "gate", gate, ndim=2, dtypes=(torch.float32,), device=dev)
        if tuple(gate.shape) != (N, K):
            raise ValueError(f"{OP}: gate must be ({N}, {K}) fp32, got {tuple(gate.shape)}")
    if residual is not None:
        check_tensor(OP, "residual", residual, ndim=4, device=dev)
        if tuple(residual.shape) != (N, O, H, W):
            raise ValueError(f"{OP}: residual must have shape {(N, O, H, W)}, got {tuple(residual.shape)}")
    check_activation(OP, "act", act)
    if valid_hw is not None:
        if not pool_only:
            raise ValueError(f"{OP}: valid_hw only matters with pool_only=True (the map is pointwise)")
        check_tensor(OP, "valid_hw", valid_hw, ndim=2, dtypes=(torch.int32,), device=dev)
        if tuple(valid_hw.shape) != (N, 2):
            raise ValueError(f"{OP}: valid_hw must have shape ({N}, 2), got {tuple(valid_hw.shape)}")
    return N, K, H, W, O


def _block_sizes(HW: int, K: int, O: int):
    if interpreting():  # ~30 ms per program: few, large blocks
        block_n = max(16, min(next_pow2(O), 2048))
        block_m = max(16, min(next_pow2(HW), 131072 // block_n))
        return block_m, block_n, max(16, min(next_pow2(K), 256)), 4, 1
    block_m = 64 if HW >= 64 else max(16, next_pow2(HW))
    block_n = 128 if O >= 128 else max(16, next_pow2(O))
    block_k = 32 if K >= 32 else 16
    return block_m, block_n, block_k, 4, 3


def pointwise_gated_launch(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                           valid_hw=None):
    """Check, allocate and launch. Returns (out, pool): out is the (N, O, H, W) map in x's memory
    format (empty with ``pool_only``), pool the (N, O) fp32 sums (empty without ``pool_only``)."""
    N, K, H, W, O = _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    out = x.new_empty((0,)) if pool_only else empty_like_format(x, (N, O, H, W))
    pool = torch.zeros((N, O) if pool_only else (0,), dtype=torch.float32, device=x.device)
    if N == 0 or O == 0 or H * W == 0:
        return out, pool
    w2 = weight.reshape(O, K).contiguous()
    gate = gate.contiguous() if gate is not None else None
    valid_hw = valid_hw.contiguous() if valid_hw is not None else None
    block_m, block_n, block_k, num_warps, num_stages = _block_sizes(H * W, K, O)
    dot_fp32 = interpreting() or x.dtype == torch.float32
    partial = pool_only and deterministic_pool()
    autotune = use_autotune() and not partial  # the partial buffer's size depends on BLOCK_M
    kernel = _pointwise_gated_autotuned if autotune else _pointwise_gated_kernel
    blocks = {} if autotune else {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k,
                                  "num_warps": num_warps, "num_stages": num_stages}
    if partial:
        pool_out = pool
        pool = torch.empty((N, triton.cdiv(H * W, block_m), O), dtype=torch.float32, device=x.device)
    # reset_to_zero zeroes whatever is passed as pool_ptr: without a pool it must be scratch,
    # never an input, which autotuning on a GPU would wipe
    scratch = None if pool_only else torch.empty(1, dtype=torch.float32, device=x.device)  # no fill launch
    for n0 in range(0, N, MAX_GRID_Z):
        n1 = min(N, n0 + MAX_GRID_Z)
        xs = x[n0:n1]
        outs = out if pool_only else out[n0:n1]
        res = residual[n0:n1] if residual is not None else None
        o_strides = (0, 0, 0, 0) if pool_only else outs.stride()
        r_strides = (0, 0, 0, 0) if res is None else res.stride()

        def grid(meta, batch=n1 - n0):
            return (triton.cdiv(H * W, meta["BLOCK_M"]), triton.cdiv(O, meta["BLOCK_N"]), batch)

        launch(OP, kernel, grid, dict(
            x_ptr=xs, w_ptr=w2, bias_ptr=bias, gate_ptr=gate[n0:n1] if gate is not None else bias,
            res_ptr=res if res is not None else bias, out_ptr=outs if not pool_only else bias,
            pool_ptr=pool[n0:n1] if pool_only else scratch,
            valid_ptr=valid_hw[n0:n1] if valid_hw is not None else bias,
            K=K, O=O, H=H, W=W,
            **dict(zip(("sxn", "sxc", "sxh", "sxw"), xs.stride())),
            **dict(zip(("son", "soc", "soh", "sow"), o_strides)),
            **dict(zip(("srn", "src", "srh", "srw"), r_strides)),
        ), dict(
            HAS_GATE=gate is not None, HAS_RES=res is not None, ACT=ACT_CODES[act],
            POOL_ONLY=pool_only, RAGGED=valid_hw is not None, DOT_FP32=dot_fp32,
            POOL_PARTIAL=partial, **blocks,
        ), on=x)
    if partial:
        record_launch(OP + "[partial-sum]")
        torch.sum(pool, dim=1, out=pool_out)
        pool = pool_out
    return out, pool


@torch.library.custom_op("fastmbconv::pointwise_gated", mutates_args=())
def _pointwise_gated_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gate: Optional[torch.Tensor],
    residual: Optional[torch.Tensor], act: str, pool_only: bool, valid_hw: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    return pointwise_gated_launch(x, weight, bias, gate, residual, act, pool_only, valid_hw)


@_pointwise_gated_op.register_fake
def _(x, weight, bias, gate, residual, act, pool_only, valid_hw):
    N, K, H, W, O = _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    out = x.new_empty((0,)) if pool_only else empty_like_format(x, (N, O, H, W))
    pool = x.new_empty((N, O) if pool_only else (0,), dtype=torch.float32)
    return out, pool


# ---------------------------------------------------------------------- implementation choice
IMPL_ENV_VAR = "FASTMBCONV_POINTWISE_IMPL"


def choose_pointwise_impl(M: int, K: int, N: int, dtype: torch.dtype, device, pool_only: bool = False) -> str:
    """``"triton"`` or ``"torch"`` for a (M pixels) x (K in) -> (N out) 1x1 conv.

    Order: the ``FASTMBCONV_POINTWISE_IMPL`` env var (``triton``/``torch``), then a heuristic. Off CUDA the answer is always ``"triton"``
    (the interpreter path the tests run). The heuristic is a first guess, not yet tuned on a GPU:
    fp16/bf16 1x1 convs are memory-bound, so fusing the gate/bias/residual passes wins once there
    are enough pixels to fill the GPU (M >= 2048); fp32 with both widths >= 64 is compute-bound
    on CUDA cores, where cuBLAS is the safer bet. ``pool_only`` (the head) always takes Triton,
    since the fallback would have to write the whole head map.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "triton"
    forced = os.environ.get(IMPL_ENV_VAR, "").strip().lower()
    if forced in ("triton", "torch"):
        return forced
    if pool_only:
        return "triton"
    if dtype == torch.float32:
        return "torch" if K >= 64 and N >= 64 else "triton"
    return "triton" if M >= 2048 else "torch"


def pointwise_gated_torch(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                          valid_hw=None):
    """The cuBLAS fallback at the input's precision: x * gate, then matmul + bias (+ residual)."""
    _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    O, K = weight.shape[0], weight.shape[1]
    record_launch(OP + "[torch]")
    xh = x.permute(0, 2, 3, 1)  # (N, H, W, K): a free view for channels_last input
    if gate is not None:
        xh = xh * gate.to(x.dtype)[:, None, None, :]
    y = F.linear(xh, weight.reshape(O, K), bias.to(x.dtype))
    y = activation_ref(y, act)
    if residual is not None:
        y = y + residual.permute(0, 2, 3, 1)
    if pool_only:
        if valid_hw is not None:
            y = y * valid_mask(valid_hw, *x.shape[-2:])[..., None]
        return y.float().sum((1, 2))
    return y.permute(0, 3, 1, 2)


def pointwise_gated(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                    valid_hw=None, impl: str | None = None):
    """The gated 1x1 conv; returns the (N, O, H, W) map, or with ``pool_only`` the (N, O) fp32
    sums over each image's valid pixels. ``impl`` forces ``"triton"`` or ``"torch"``; by default
    :func:`choose_pointwise_impl` decides."""
    if impl is None:
        M = x.shape[0] * x.shape[2] * x.shape[3] if x.ndim == 4 else 0
        impl = choose_pointwise_impl(M, x.shape[1] if x.ndim == 4 else 0, weight.shape[0], x.dtype, x.device, pool_only)
    if impl == "torch":
        return pointwise_gated_torch(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    if impl != "triton":
        raise ValueError(f"{OP}: impl must be 'triton', 'torch' or None, got {impl!r}")
    out, pool = call_op(torch.ops.fastmbconv.pointwise_gated, pointwise_gated_launch,
                        x, weight, bias, gate, residual, act, bool(pool_only), valid_hw)
    return pool if pool_only else out


def pointwise_gated_ref(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                        valid_hw=None, compute_dtype=torch.float32):
    """Pure-torch twin in ``compute_dtype`` (NCHW einsum)."""
    O, K = weight.shape[0], weight.shape[1]
    xc = x.to(compute_dtype)
    if gate is not None:
        xc = xc * gate.to(compute_dtype)[:, :, None, None]
    y = torch.einsum("nchw,oc->nohw", xc, weight.reshape(O, K).to(compute_dtype))
    y = activation_ref(y + bias.to(compute_dtype)[None, :, None, None], act)
    if residual is not None:
        y = y + residual.to(compute_dtype)
    if pool_only:
        if valid_hw is not None:
            y = y * valid_mask(valid_hw, *x.shape[-2:])[:, None]
        return y.sum((2, 3))
    return y
