"""1x1 conv as a GEMM over NHWC pixels, with the SE gate in the prologue and folded BN bias,
activation, residual or global-average-pool in the epilogue.

    out[n, o, h, w] = act(sum_c (x[n, c, h, w] * gate[n, c]) * W[o, c] + bias[o]) + residual[n, o, h, w]

Why: the SE gate, the project conv's BN and the residual add are each a full pass over an
activation in eager PyTorch; here they ride along with the GEMM's loads and stores. The same op
serves the expand conv (SiLU epilogue), the project conv (gate + residual) and the head conv
(SiLU, and with ``pool_only`` it returns the per-image mean and never writes the head map).

Rows are the pixels of all images together (M = N x H x W), so the small late-stage maps fill
whole tiles and one weight tile serves many images; each row finds its image for the gate. The
pool epilogue instead takes tiles within one image each (its last tile's rows past the image
masked) and sums each tile's rows, with no per-row image; a second small launch adds those
sums up per image in a fixed order (no atomics, no zero fill) and divides by the pixel count.

:func:`choose_pointwise_impl` lets a caller force the torch fallback (``x * gate`` then cuBLAS
matmul + bias + residual) with an environment variable, for comparisons.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._autotune import autotune
from ._launch import call_op, launch, record_launch, recording, select_kernel
from ._math import bias_activation, round_to_bf16
from ._utils import (
    ACT_CODES, activation_ref, autocast_off, batch_bucket, check_1x1_weight, check_activation, check_grid,
    check_tensor, check_valid_sizes, dense_rows, dot_fp32, empty_like_format, interpreting, needs_int64, next_pow2,
    round_bf16, silu_math, valid_mask, valid_pixel_counts,
)

OP = "pointwise_gated"


@triton.jit
def _row_offsets(m, HW, W, sn, sh, sw, DENSE_ROWS: tl.constexpr, INT64: tl.constexpr):
    """Element offsets of rows ``m`` (pixels over all images) in a 4-D tensor's storage."""
    if DENSE_ROWS:  # rows evenly spaced: NHWC-contiguous images
        if INT64:
            off = m.to(tl.int64) * sw
        else:
            off = m * sw
    else:
        p = m % HW
        off = (m // HW).to(tl.int64) * sn + (p // W).to(tl.int64) * sh + (p % W).to(tl.int64) * sw
    return off


@triton.jit
def _pointwise_gated_kernel(
    x_ptr, w_ptr, bias_ptr, gate_ptr, res_ptr, out_ptr, part_ptr, valid_ptr,
    M, HW, W, K, O, tiles_per_image,
    sxn, sxc, sxh, sxw, son, soc, soh, sow, srn, src, srh, srw, batch_bucket,
    HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, MATH: tl.constexpr, POOL_ONLY: tl.constexpr,
    RAGGED: tl.constexpr, DOT_FP32: tl.constexpr, ROUND_BF16: tl.constexpr, DENSE_ROWS: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if INT64:  # rows (pixels over all images) can pass 2^31 themselves: narrow layers, huge batches
        pid_m = pid_m.to(tl.int64)
    offs_o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = offs_o < O
    if POOL_ONLY:  # a tile within one image (tiles_per_image of them), its rows past the image masked
        image = pid_m // tiles_per_image
        p = pid_m % tiles_per_image * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = p < HW
        offs_m = image * HW + p
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        if HAS_GATE:
            image = offs_m // HW
    x_rows = x_ptr + _row_offsets(offs_m, HW, W, sxn, sxh, sxw, DENSE_ROWS, INT64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        if INT64:  # a channel stride can reach past 2^31 too (NCHW planes of a huge image)
            k_off = offs_k.to(tl.int64) * sxc
        else:
            k_off = offs_k * sxc
        a = tl.load(x_rows[:, None] + k_off[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + offs_o[None, :] * K + offs_k[:, None], mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        if HAS_GATE and POOL_ONLY:  # the tile's image's gate
            a = a.to(tl.float32) * tl.load(gate_ptr + image * K + offs_k, mask=k_ok, other=0.0)[None, :]
        elif HAS_GATE:  # each row's own image's gate (L1 hits: a tile spans few images)
            g = tl.load(gate_ptr + image[:, None] * K + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            a = a.to(tl.float32) * g
        if DOT_FP32:  # bf16: the gated rows are fp32, which a GPU casts to bf16
            a = round_to_bf16(a.to(tl.float32)) if ROUND_BF16 else a.to(tl.float32)
            acc = tl.dot(a, b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(w_ptr.dtype.element_ty), b, acc)

    y = bias_activation(acc, tl.load(bias_ptr + offs_o, mask=o_ok, other=0.0), ACT, MATH)
    tile_ok = m_ok[:, None] & o_ok[None, :]
    if INT64:
        offs_o = offs_o.to(tl.int64)
    if HAS_RES:
        r_rows = res_ptr + _row_offsets(offs_m, HW, W, srn, srh, srw, DENSE_ROWS, INT64)
        y += tl.load(r_rows[:, None] + (offs_o * src)[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    if POOL_ONLY:  # the tile's sum: part[tile, o]
        keep = m_ok
        if RAGGED:
            keep = keep & ((p // W) < tl.load(valid_ptr + 2 * image)) & ((p % W) < tl.load(valid_ptr + 2 * image + 1))
        part = tl.sum(tl.where(keep[:, None], y, 0.0), axis=0)
        tl.store(part_ptr + pid_m.to(tl.int64) * O + offs_o, part, mask=o_ok)
    else:
        o_rows = out_ptr + _row_offsets(offs_m, HW, W, son, soh, sow, DENSE_ROWS, INT64)
        tl.store(o_rows[:, None] + (offs_o * soc)[None, :], y.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _pool_finish_kernel(part_ptr, valid_ptr, out_ptr, HW, W, O, tiles_per_image, RAGGED: tl.constexpr,
                        BLOCK_O: tl.constexpr):
    """out[n, o] = (sum of image n's tiles) / its pixel count, in a fixed order. A ragged size
    is clamped into the map (as the tiles' masks clamp it), and an empty image's mean is 0."""
    n = tl.program_id(0)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < O
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for t in range(0, tiles_per_image):
        acc += tl.load(part_ptr + (n.to(tl.int64) * tiles_per_image + t) * O + offs_o, mask=o_ok, other=0.0)
    if RAGGED:
        h = tl.minimum(tl.maximum(tl.load(valid_ptr + 2 * n), 0), HW // W)
        w = tl.minimum(tl.maximum(tl.load(valid_ptr + 2 * n + 1), 0), W)
        acc = acc / tl.maximum(h * w, 1).to(tl.float32)
    else:
        acc = acc / HW
    tl.store(out_ptr + n.to(tl.int64) * O + offs_o, acc.to(out_ptr.dtype.element_ty), mask=o_ok)


# GPU tiles to try, (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), none of which spills on any
# B0-B7 layer in fp16/bf16 (python -m fastmbconv.kernel_report); the pool variant keeps the
# launcher's BLOCK_M, since the number of partial-sum slots depends on it.
_GPU_CONFIGS = [
    (64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3),
    (64, 32, 64, 4, 4), (32, 64, 64, 4, 4), (128, 64, 64, 8, 3),
]
# fp32 products run as FMAs (input_precision="ieee"), whose operands take far more registers
# than tensor-core fragments. On sm_90, 4-warp tiles of 8192 outputs spill 16-24 B on most fp32
# layers, 32 x 64 x 64 spills 24 B (B3's 5x5 blocks), and the gated depthwise-separable blocks
# (fewer than 64 input channels) spill 16-608 B with K steps of 32 or 64 (B3's, B5's stage 0):
# there only 16-channel steps or 32 x 32 tiles stay clean (--model efficientnet_b3 --dtype fp32).
_FP32_CONFIGS = [(64, 64, 32, 4, 3), (64, 32, 64, 4, 4), (128, 64, 64, 8, 3)]
_FP32_SMALL_GATED_CONFIGS = [(64, 32, 16, 4, 3), (32, 32, 32, 4, 3)]
# Layers of at most 16 output channels (the depthwise-separable blocks' projections in B0-B2)
# try only 16-wide tiles: a wider one computes and stages mostly padding (B0's blocks.0.0:
# 64 x 64 models 125 us, issue-bound; 64 x 16 105 us, at its memory time).
# On the H200 the 64 x 16 tile moved 405 GB/s at batch 256 (one small load-compute-store per
# program): taller tiles give each program more rows in flight (fp16/bf16 with K a multiple of
# 16 only: fp32's, and K = 24's, spill or overflow shared memory).
_NARROW_CONFIGS = [(64, 16, 32, 4, 3), (128, 16, 32, 4, 3), (256, 16, 32, 4, 3), (512, 16, 32, 8, 3)]
_NARROW_FP32_CONFIGS = _NARROW_CONFIGS[:2]
_KEY = ["K", "O", "HW", "W", "HAS_GATE", "HAS_RES", "ACT", "RAGGED", "DENSE_ROWS", "batch_bucket"]


def _small_gated(K: int, gated: bool) -> bool:
    return gated and K < 64


def _prune_configs(configs, named_args, **kwargs):
    """At most 16 output channels: the 16-wide tiles. fp32: the tiles above that do not spill.
    fp16/bf16 with the SE gate applied to fewer than 64 input channels (the
    depthwise-separable blocks: 16-40 channels in B0-B5): tiles of at most 4096 outputs (8192
    need 255 registers and spill on sm_90, B3's and B4's)."""
    args = {**named_args, **kwargs}
    small_gated = _small_gated(args["K"], args["HAS_GATE"])
    if args["O"] <= 16:
        keep = _NARROW_FP32_CONFIGS if args["DOT_FP32"] or args["K"] % 16 else _NARROW_CONFIGS
    elif args["DOT_FP32"]:
        keep = _FP32_SMALL_GATED_CONFIGS if small_gated else _FP32_CONFIGS
    else:
        keep = [c for c in _GPU_CONFIGS if not small_gated or c[0] * c[1] <= 4096]
    kept = [c for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in keep]
    return kept or configs[:1]


_pointwise_gated_autotuned = autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
             for m, n, k, w, st in _GPU_CONFIGS + _FP32_SMALL_GATED_CONFIGS + _NARROW_CONFIGS],
    key=_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)(_pointwise_gated_kernel)
_pointwise_pool_autotuned = autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
             for n, k, w, st in sorted({c[1:] for c in _GPU_CONFIGS})],
    key=_KEY + ["BLOCK_M"],
)(_pointwise_gated_kernel)


def _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw):
    check_tensor(OP, "x", x, ndim=4)
    N, K, H, W = x.shape
    dev = x.device
    O = check_1x1_weight(OP, "weight", weight, x, "O")
    check_tensor(OP, "bias", bias, ndim=1, dtypes=(torch.float32,), device=dev)
    if bias.shape[0] != O:
        raise ValueError(f"{OP}: bias must have {O} entries (fp32, one per output channel), got {bias.shape[0]}")
    if gate is not None:
        check_tensor(OP, "gate", gate, ndim=2, dtypes=(torch.float32,), device=dev)
        if tuple(gate.shape) != (N, K):
            raise ValueError(f"{OP}: gate must be ({N}, {K}) fp32, got {tuple(gate.shape)}")
    if residual is not None:
        check_tensor(OP, "residual", residual, ndim=4, dtypes=(x.dtype,), device=dev)
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


def _heuristic(M: int, K: int, O: int, pool_only: bool, fp32: bool = False, small_gated: bool = False) -> dict:
    if interpreting():  # ~30 ms per program: few, large blocks
        block_n = max(16, min(next_pow2(O), 2048))
        block_m = max(16, min(next_pow2(M), 131072 // block_n))
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": max(16, min(next_pow2(K), 256)),
                "num_warps": 4, "num_stages": 1}
    # fp32 (FMA products): at most 4096 outputs, and 16-channel steps where the gate is applied to
    # few channels (see _FP32_CONFIGS)
    widest_n = 32 if fp32 and small_gated else 64 if fp32 else 128
    return {"BLOCK_M": 64 if M >= 64 else max(16, next_pow2(M)), "BLOCK_N": min(widest_n, max(16, next_pow2(O))),
            "BLOCK_K": 16 if K < 32 or fp32 and small_gated else 32, "num_warps": 4, "num_stages": 3}


def pointwise_gated_launch(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                           valid_hw=None):
    """Check, allocate and launch. Returns (out, pooled): out is the (N, O, H, W) map in x's memory
    format (empty with ``pool_only``), pooled the (N, O) per-image means over the valid pixels
    in x's dtype (empty without ``pool_only``)."""
    N, K, H, W, O = _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    check_valid_sizes(OP, valid_hw, H, W)  # reads values: not among the fake implementation's checks
    out = x.new_empty((0,)) if pool_only else empty_like_format(x, (N, O, H, W))
    pooled = x.new_empty((N, O) if pool_only else (0,))
    M = N * H * W
    if M == 0 or O == 0:
        return out, pooled
    heuristic = _heuristic(M, K, O, pool_only, x.dtype == torch.float32, _small_gated(K, gate is not None))
    tensors = [t for t in (x, residual, None if pool_only else out) if t is not None]
    dense = dense_rows(*tensors)
    # the row numbers (image * HW + pixel) and gate offsets (image * K + channel) can pass 2^31 where
    # no tensor's reach does: pool_only writes no map, and a batch-broadcast x spans one image
    int64 = needs_int64(*tensors, per_sample=False) or max(M, N * K if gate is not None else 0) >= 2**31 - 1
    ragged = valid_hw is not None
    key = (OP, K, O, H * W, W, gate is not None, residual is not None, act, ragged, dense, batch_bucket(N), x.dtype,
           pool_only)
    if pool_only:
        block_m = heuristic.pop("BLOCK_M")
        kernel, config = select_kernel(_pointwise_pool_autotuned, _pointwise_gated_kernel, key + (block_m,), heuristic,
                                       on=x)
        config = dict(config, BLOCK_M=block_m)
        tiles_per_image = triton.cdiv(H * W, block_m)
        partials = torch.empty((N * tiles_per_image, O), dtype=torch.float32, device=x.device)
    else:
        kernel, config = select_kernel(_pointwise_gated_autotuned, _pointwise_gated_kernel, key, heuristic, on=x)
        tiles_per_image, partials = 1, bias

    def grid(meta):
        rows = N * tiles_per_image if pool_only else triton.cdiv(M, meta["BLOCK_M"])
        return (rows, triton.cdiv(O, meta["BLOCK_N"]))

    check_grid(OP, grid, (f"{N} images of {tiles_per_image} tiles" if pool_only else f"{M} rows (pixels)",
                          f"{O} output channels"), kernel, config, upper=(N * tiles_per_image if pool_only else M, O))
    launch(OP, kernel, grid, dict(
        x_ptr=x, w_ptr=weight.reshape(O, K).contiguous(), bias_ptr=bias.contiguous(),
        gate_ptr=gate.contiguous() if gate is not None else bias, res_ptr=residual if residual is not None else bias,
        out_ptr=bias if pool_only else out, part_ptr=partials, valid_ptr=valid_hw.contiguous() if ragged else bias,
        M=M, HW=H * W, W=W, K=K, O=O, tiles_per_image=tiles_per_image,
        **dict(zip(("sxn", "sxc", "sxh", "sxw"), x.stride())),
        **dict(zip(("son", "soc", "soh", "sow"), (0,) * 4 if pool_only else out.stride())),
        **dict(zip(("srn", "src", "srh", "srw"), (0,) * 4 if residual is None else residual.stride())),
        batch_bucket=batch_bucket(N),
    ), dict(
        HAS_GATE=gate is not None, HAS_RES=residual is not None, ACT=ACT_CODES[act],
        MATH=silu_math(x.dtype, x.device), POOL_ONLY=pool_only, RAGGED=ragged,
        DOT_FP32=dot_fp32(x.dtype), ROUND_BF16=round_bf16(x.dtype), DENSE_ROWS=dense, INT64=int64, **config,
    ), on=x)
    if pool_only:
        block_o = min(1024, max(16, next_pow2(O)))
        launch(OP + "[pool]", _pool_finish_kernel, (N, triton.cdiv(O, block_o)), dict(
            part_ptr=partials, valid_ptr=valid_hw.contiguous() if ragged else bias, out_ptr=pooled,
            HW=H * W, W=W, O=O, tiles_per_image=tiles_per_image,
        ), dict(RAGGED=ragged, BLOCK_O=block_o, num_warps=4), on=x)
    return out, pooled


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
    return out, x.new_empty((N, O) if pool_only else (0,))


# ---------------------------------------------------------------------- implementation choice
IMPL_ENV_VAR = "FASTMBCONV_POINTWISE_IMPL"


def choose_pointwise_impl(M: int, K: int, N: int, dtype: torch.dtype, device, pool_only: bool = False) -> str:
    """``"triton"`` unless ``FASTMBCONV_POINTWISE_IMPL=torch`` forces the cuBLAS fallback on CUDA
    (for comparisons; the head's ``pool_only`` conv always takes Triton, since the fallback
    would write the whole head map). Off CUDA the answer is always ``"triton"``. The Triton
    kernel is the default at every size: rows flattened across images fill its tiles at batch 1
    too, and it fuses the gate, bias, residual and pool passes the fallback makes separately."""
    device = torch.device(device)
    if device.type == "meta" and recording():  # the static kernel report: answer as on CUDA
        device = torch.device("cuda")
    if device.type != "cuda" or pool_only:
        return "triton"
    forced = os.environ.get(IMPL_ENV_VAR, "").strip().lower()
    return "torch" if forced == "torch" else "triton"


def pointwise_gated_torch(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                          valid_hw=None):
    """The cuBLAS fallback at the input's precision: x * gate, then matmul + bias (+ residual)."""
    _check_args(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    check_valid_sizes(OP, valid_hw, x.shape[2], x.shape[3])
    O, K = weight.shape[0], weight.shape[1]
    record_launch(OP + "[torch]")
    xh = x.permute(0, 2, 3, 1)  # (N, H, W, K): a free view for channels_last input
    with autocast_off(x.device):
        if gate is not None:
            xh = xh * gate.to(x.dtype)[:, None, None, :]
        y = activation_ref(F.linear(xh, weight.reshape(O, K), bias.to(x.dtype)), act)
        if residual is not None:
            y = y + residual.permute(0, 2, 3, 1)
    if pool_only:
        count = x.shape[2] * x.shape[3]
        if valid_hw is not None:
            y = y * valid_mask(valid_hw, *x.shape[-2:])[..., None]
            count = valid_pixel_counts(valid_hw, *x.shape[-2:])
        return (y.float().sum((1, 2)) / count).to(x.dtype)
    return y.permute(0, 3, 1, 2)


def pointwise_gated(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                    valid_hw=None, impl: str | None = None):
    """The gated 1x1 conv; returns the (N, O, H, W) map, or with ``pool_only`` the (N, O)
    per-image means over the valid pixels (in x's dtype). ``impl`` forces ``"triton"`` or
    ``"torch"``; by default :func:`choose_pointwise_impl` decides."""
    if impl is None:
        M = x.shape[0] * x.shape[2] * x.shape[3] if x.ndim == 4 else 0
        impl = choose_pointwise_impl(M, x.shape[1] if x.ndim == 4 else 0, weight.shape[0], x.dtype, x.device, pool_only)
    if impl == "torch":
        return pointwise_gated_torch(x, weight, bias, gate, residual, act, pool_only, valid_hw)
    if impl != "triton":
        raise ValueError(f"{OP}: impl must be 'triton', 'torch' or None, got {impl!r}")
    out, pooled = call_op(torch.ops.fastmbconv.pointwise_gated, pointwise_gated_launch,
                          x, weight, bias, gate, residual, act, bool(pool_only), valid_hw)
    return pooled if pool_only else out


def pointwise_gated_ref(x, weight, bias, gate=None, residual=None, act="identity", pool_only=False,
                        valid_hw=None, compute_dtype=torch.float32):
    """Pure-torch twin in ``compute_dtype`` (NCHW einsum); ``pool_only`` gives the per-image mean
    over the valid pixels, in ``compute_dtype``."""
    O, K = weight.shape[0], weight.shape[1]
    xc = x.to(compute_dtype)
    if gate is not None:
        xc = xc * gate.to(compute_dtype)[:, :, None, None]
    y = torch.einsum("nchw,oc->nohw", xc, weight.reshape(O, K).to(compute_dtype))
    y = activation_ref(y + bias.to(compute_dtype)[None, :, None, None], act)
    if residual is not None:
        y = y + residual.to(compute_dtype)
    if pool_only:
        count = x.shape[2] * x.shape[3]
        if valid_hw is not None:
            y = y * valid_mask(valid_hw, *x.shape[-2:])[:, None]
            count = valid_pixel_counts(valid_hw, *x.shape[-2:]).to(compute_dtype)
        return y.sum((2, 3)) / count
    return y
