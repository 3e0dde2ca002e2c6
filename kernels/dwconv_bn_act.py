"""Depthwise kxk conv + folded BatchNorm + activation, with an optional SE pool epilogue.

Why one kernel: in eager PyTorch the depthwise conv, BN, SiLU and the SE mean each read and
write the whole expanded activation (the biggest tensors in EfficientNet). Here the input is
read once (with the expand conv's SiLU applied as it is loaded), BN is a per-channel fp32
``scale``/``shift``, and the per-(sample, channel) sums the SE needs are accumulated with
atomics (or, under ``torch.use_deterministic_algorithms(True)``, written per tile and reduced
in a fixed order), so SE never re-reads the activation. Padding is given as (top, bottom, left, right)
and applied by masking, never by materialising a padded tensor, which covers both symmetric
and TF "SAME" padding. Optional ragged arguments give each image its own valid size and
(top, left) padding.
"""
from __future__ import annotations

from typing import Optional, Sequence

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

OP = "dwconv_bn_act"
MAX_GRID_Z = 65535  # CUDA's limit on grid axis 2, which indexes the batch


@triton.jit
def _dwconv_bn_act_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, out_ptr, pool_ptr, valid_ptr, padtl_ptr,
    C, H, W, H_out, W_out,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    pad_top, pad_left,
    STRIDE: tl.constexpr, KSIZE: tl.constexpr, ACT: tl.constexpr, IN_ACT: tl.constexpr,
    WITH_POOL: tl.constexpr, RAGGED: tl.constexpr, POOL_PARTIAL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < H_out * W_out
    c_mask = offs_c < C
    oh = offs_p // W_out
    ow = offs_p % W_out

    if RAGGED:
        # clamped so a bad size can never read outside the buffer (CUDA inputs skip the host check)
        h_img = tl.minimum(tl.load(valid_ptr + 2 * n), H)
        w_img = tl.minimum(tl.load(valid_ptr + 2 * n + 1), W)
        top = tl.load(padtl_ptr + 2 * n)
        left = tl.load(padtl_ptr + 2 * n + 1)
        out_valid = p_mask & (oh < (h_img + STRIDE - 1) // STRIDE) & (ow < (w_img + STRIDE - 1) // STRIDE)
    else:
        h_img = H
        w_img = W
        top = pad_top
        left = pad_left
        out_valid = p_mask

    x_base = x_ptr + n * sxn
    c_off = offs_c.to(tl.int64) * sxc
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ki in tl.static_range(KSIZE):
        ih = oh * STRIDE - top + ki
        row_ok = p_mask & (ih >= 0) & (ih < h_img)
        row_off = ih.to(tl.int64) * sxh
        for kj in tl.static_range(KSIZE):
            iw = ow * STRIDE - left + kj
            ok = row_ok & (iw >= 0) & (iw < w_img)
            ptrs = x_base + (row_off + iw.to(tl.int64) * sxw)[:, None] + c_off[None, :]
            xv = tl.load(ptrs, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
            if IN_ACT == 1:
                xv = xv * tl.sigmoid(xv)  # silu(0) == 0, so padding stays zero
            elif IN_ACT == 2:
                xv = tl.minimum(tl.maximum(xv, 0.0), 6.0)
            wv = tl.load(w_ptr + offs_c * (KSIZE * KSIZE) + (ki * KSIZE + kj), mask=c_mask, other=0.0)
            acc += xv * wv.to(tl.float32)[None, :]

    scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    y = acc * scale[None, :] + shift[None, :]
    if ACT == 1:
        y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    keep = out_valid[:, None] & c_mask[None, :]
    y = tl.where(keep, y, 0.0)

    out_off = n * son + (oh.to(tl.int64) * soh + ow.to(tl.int64) * sow)[:, None] + (offs_c.to(tl.int64) * soc)[None, :]
    tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])

    if WITH_POOL:
        part = tl.sum(y, axis=0)
        if POOL_PARTIAL:  # pool is (N, tiles, C): one row per pixel tile, summed afterwards
            row = n * tl.num_programs(0) + pid_p
            tl.store(pool_ptr + row * C + offs_c, part, mask=c_mask)
        else:
            tl.atomic_add(pool_ptr + n * C + offs_c, part, mask=c_mask)


# GPU block shapes to try, (BLOCK_P pixels, BLOCK_C channels, warps); the pool sums are reset
# between benchmark runs because the epilogue accumulates them with atomics.
_GPU_CONFIGS = [(32, 64, 4), (64, 32, 4), (16, 128, 4), (64, 64, 4), (128, 32, 8), (32, 32, 2)]
_dwconv_bn_act_autotuned = triton.autotune(
    configs=[triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w) for p, c, w in _GPU_CONFIGS],
    key=["C", "H_out", "W_out", "STRIDE", "KSIZE", "WITH_POOL", "RAGGED"],
    reset_to_zero=["pool_ptr"],
)(_dwconv_bn_act_kernel)


def output_size(height: int, width: int, kernel: int, stride: int, padding: Sequence[int]) -> tuple[int, int]:
    top, bottom, left, right = padding
    return (height + top + bottom - kernel) // stride + 1, (width + left + right - kernel) // stride + 1


def _check_args(x, weight, scale, shift, padding, stride, act, input_act, valid_hw, pad_tl):
    check_tensor(OP, "x", x, ndim=4)
    N, C, H, W = x.shape
    check_tensor(OP, "weight", weight, dtypes=None, device=x.device)
    if not weight.is_floating_point():
        raise TypeError(f"{OP}: weight must be floating point, got {weight.dtype}")
    k = weight.shape[-1] if weight.ndim in (3, 4) else -1
    if weight.ndim not in (3, 4) or weight.shape[0] != C or weight.shape[-2] != k or weight.numel() != C * k * k:
        raise ValueError(
            f"{OP}: weight must be (C, 1, k, k) or (C, k, k) with C={C} (the input's channel count), "
            f"got {tuple(weight.shape)}"
        )
    if k not in (3, 5):
        raise ValueError(f"{OP}: kernel size must be 3 or 5, got {k}")
    for name, t in (("scale", scale), ("shift", shift)):
        check_tensor(OP, name, t, ndim=1, dtypes=(torch.float32,), device=x.device)
        if t.shape[0] != C:
            raise ValueError(f"{OP}: {name} must have {C} entries (one per channel), got {t.shape[0]}")
    if stride not in (1, 2):
        raise ValueError(f"{OP}: stride must be 1 or 2, got {stride}")
    padding = tuple(int(p) for p in padding)
    if len(padding) != 4 or min(padding) < 0 or max(padding) >= k:
        raise ValueError(f"{OP}: padding must be 4 values (top, bottom, left, right) in [0, {k}), got {padding}")
    check_activation(OP, "act", act)
    check_activation(OP, "input_act", input_act)
    H_out, W_out = output_size(H, W, k, stride, padding)
    if H_out < 1 or W_out < 1:
        raise ValueError(f"{OP}: input {H}x{W} with padding {padding} is too small for a {k}x{k} kernel")
    if (valid_hw is None) != (pad_tl is None):
        raise ValueError(f"{OP}: valid_hw and pad_tl must be given together (ragged batch) or not at all")
    if valid_hw is not None:
        for name, t in (("valid_hw", valid_hw), ("pad_tl", pad_tl)):
            check_tensor(OP, name, t, ndim=2, dtypes=(torch.int32,), device=x.device)
            if t.shape != (N, 2):
                raise ValueError(f"{OP}: {name} must have shape ({N}, 2), got {tuple(t.shape)}")
    return k, padding, H_out, W_out


def dwconv_bn_act_launch(x, weight, scale, shift, padding, stride=1, act="silu", input_act="identity",
                         with_pool=False, valid_hw=None, pad_tl=None):
    """Check, allocate and launch. Returns (out, pool); pool is (N, C) fp32 sums of the output
    over each image's valid output pixels, or an empty tensor without ``with_pool``."""
    k, padding, H_out, W_out = _check_args(x, weight, scale, shift, padding, stride, act, input_act, valid_hw, pad_tl)
    N, C, H, W = x.shape
    out = empty_like_format(x, (N, C, H_out, W_out))
    pool = torch.zeros((N, C) if with_pool else (0,), dtype=torch.float32, device=x.device)
    if N == 0 or C == 0:
        return out, pool
    if valid_hw is not None and valid_hw.device.type == "cpu":  # a host check on CUDA would sync every call
        hw = valid_hw
        if (hw < 1).any() or (hw[:, 0] > H).any() or (hw[:, 1] > W).any():
            raise ValueError(f"{OP}: valid_hw must lie in [1, {H}] x [1, {W}], got {hw.tolist()}")
    if valid_hw is not None:
        valid_hw, pad_tl = valid_hw.contiguous(), pad_tl.contiguous()
    w_flat = weight.reshape(C, k * k).contiguous()

    P = H_out * W_out
    if interpreting():  # ~30 ms per program: few, large blocks
        block_c = min(next_pow2(C), 2048)
        block_p = min(next_pow2(P), max(16, 65536 // block_c))
        num_warps = 4
    else:
        block_c = min(64, max(16, next_pow2(C)))
        block_p = 32 if block_c == 64 else 64
        num_warps = 4
    partial = with_pool and deterministic_pool()
    autotune = use_autotune() and not partial  # the partial buffer's size depends on BLOCK_P
    kernel = _dwconv_bn_act_autotuned if autotune else _dwconv_bn_act_kernel
    blocks = {} if autotune else {"BLOCK_P": block_p, "BLOCK_C": block_c, "num_warps": num_warps}
    if partial:
        pool_out = pool
        pool = torch.empty((N, triton.cdiv(P, block_p), C), dtype=torch.float32, device=x.device)
    # reset_to_zero zeroes whatever is passed as pool_ptr: without a pool it must be scratch,
    # never an input, which autotuning on a GPU would wipe
    pool_arg = pool if with_pool else torch.empty(1, dtype=torch.float32, device=x.device)  # no fill launch
    dummy = scale  # unread pointer for absent ragged arguments
    for n0 in range(0, N, MAX_GRID_Z):
        n1 = min(N, n0 + MAX_GRID_Z)
        xs, outs = x[n0:n1], out[n0:n1]

        def grid(meta, batch=n1 - n0):
            return (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), batch)

        sxn, sxc, sxh, sxw = xs.stride()
        son, soc, soh, sow = outs.stride()
        launch(OP, kernel, grid, dict(
            x_ptr=xs, w_ptr=w_flat, scale_ptr=scale, shift_ptr=shift, out_ptr=outs,
            pool_ptr=pool_arg[n0:n1] if with_pool else pool_arg,
            valid_ptr=valid_hw[n0:n1] if valid_hw is not None else dummy,
            padtl_ptr=pad_tl[n0:n1] if pad_tl is not None else dummy,
            C=C, H=H, W=W, H_out=H_out, W_out=W_out, sxn=sxn, sxc=sxc, sxh=sxh, sxw=sxw,
            son=son, soc=soc, soh=soh, sow=sow, pad_top=padding[0], pad_left=padding[2],
        ), dict(
            STRIDE=stride, KSIZE=k, ACT=ACT_CODES[act], IN_ACT=ACT_CODES[input_act],
            WITH_POOL=with_pool, RAGGED=valid_hw is not None, POOL_PARTIAL=partial, **blocks,
        ), on=x)
    if partial:
        record_launch(OP + "[partial-sum]")
        torch.sum(pool, dim=1, out=pool_out)
        pool = pool_out
    return out, pool


@torch.library.custom_op("fastmbconv::dwconv_bn_act", mutates_args=())
def _dwconv_bn_act_op(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    padding: list[int], stride: int, act: str, input_act: str, with_pool: bool,
    valid_hw: Optional[torch.Tensor], pad_tl: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    return dwconv_bn_act_launch(x, weight, scale, shift, padding, stride, act, input_act, with_pool, valid_hw, pad_tl)


@_dwconv_bn_act_op.register_fake
def _(x, weight, scale, shift, padding, stride, act, input_act, with_pool, valid_hw, pad_tl):
    k, padding, H_out, W_out = _check_args(x, weight, scale, shift, padding, stride, act, input_act, valid_hw, pad_tl)
    N, C = x.shape[:2]
    out = empty_like_format(x, (N, C, H_out, W_out))
    pool = x.new_empty((N, C) if with_pool else (0,), dtype=torch.float32)
    return out, pool


def dwconv_bn_act(x, weight, scale, shift, padding, stride=1, act="silu", input_act="identity",
                  with_pool=False, valid_hw=None, pad_tl=None):
    """``act(conv_dw(input_act(x)) * scale + shift)``; returns ``out`` or ``(out, pool_sums)``.

    ``padding`` is (top, bottom, left, right). ``valid_hw``/``pad_tl`` (N, 2) int32 make a ragged
    batch: image n reads only its valid (h, w) corner with its own (top, left) padding; its
    outputs beyond (ceil(h/stride), ceil(w/stride)) are written as 0 and left out of the pool.
    """
    out, pool = call_op(
        torch.ops.fastmbconv.dwconv_bn_act, dwconv_bn_act_launch,
        x, weight, scale, shift, [int(p) for p in padding], int(stride), act, input_act,
        bool(with_pool), valid_hw, pad_tl,
    )
    return (out, pool) if with_pool else out


def dwconv_bn_act_ref(x, weight, scale, shift, padding, stride=1, act="silu", input_act="identity",
                      with_pool=False, valid_hw=None, pad_tl=None, compute_dtype=torch.float32):
    """Pure-torch twin (F.pad + grouped F.conv2d), computed in ``compute_dtype``."""
    C = x.shape[1]
    k = weight.shape[-1]
    top, bottom, left, right = padding
    xc = activation_ref(x.to(compute_dtype), input_act)
    w = weight.reshape(C, 1, k, k).to(compute_dtype)
    H, W = x.shape[-2:]
    H_out, W_out = output_size(H, W, k, stride, padding)
    if valid_hw is None:
        y = F.conv2d(F.pad(xc, (left, right, top, bottom)), w, stride=stride, groups=C)
        valid_out = None
    else:
        ys = []
        for n in range(x.shape[0]):
            h, wd = (int(v) for v in valid_hw[n])
            t, l = (int(v) for v in pad_tl[n])
            xn = torch.zeros_like(xc[n : n + 1])
            xn[..., :h, :wd] = xc[n : n + 1, :, :h, :wd]
            b = max(0, (H_out - 1) * stride + k - t - H)
            r = max(0, (W_out - 1) * stride + k - l - W)
            ys.append(F.conv2d(F.pad(xn, (l, r, t, b)), w, stride=stride, groups=C)[..., :H_out, :W_out])
        y = torch.cat(ys) if ys else xc.new_zeros((0, C, H_out, W_out))
        valid_out = (valid_hw.long() + stride - 1) // stride
    y = activation_ref(y * scale.to(compute_dtype).view(1, C, 1, 1) + shift.to(compute_dtype).view(1, C, 1, 1), act)
    if valid_out is not None:
        y = torch.where(valid_mask(valid_out, H_out, W_out)[:, None], y, y.new_zeros(()))
    if with_pool:
        return y, y.sum((2, 3))
    return y
