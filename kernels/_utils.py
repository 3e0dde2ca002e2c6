"""Helpers shared by the kernel launchers (torch only; triton is imported by the op modules)."""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("identity", "silu", "relu6")
ACT_CODES = {"identity": 0, "silu": 1, "relu6": 2}


def interpreting() -> bool:
    """True when kernels run through Triton's CPU interpreter (few large blocks are then fastest)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_capturing() -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def dot_fp32(dtype: torch.dtype) -> bool:
    """The kernels' ``DOT_FP32``: products as fp32 FMAs (``input_precision="ieee"``, no TF32) for
    fp32 operands, and for bf16 under the interpreter, which holds bf16 as raw integers (its bf16
    dot is meaningless). fp16 operands take the tensor-core dot everywhere: the interpreter's fp16
    dot multiplies exactly and sums in fp32, as tensor cores do, so CPU tests run the GPU's branch."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


def round_bf16(dtype: torch.dtype) -> bool:
    """The kernels' ``ROUND_BF16``: under the interpreter, an fp32 value that a GPU casts to bf16
    for a tensor-core dot (or for the scratch that feeds one) is rounded first, by
    ``_math.round_to_bf16``. bf16 products are exact in fp32, so the interpreter's fp32 dot of
    rounded operands (``DOT_FP32``) computes what the tensor cores do."""
    return dtype == torch.bfloat16 and interpreting()


def silu_math(dtype: torch.dtype, device: torch.device) -> int:
    """The kernels' ``MATH`` code (see :mod:`._math`): SiLU in the tanh form for fp16/bf16
    activations (``FASTMBCONV_SILU=sigmoid`` forces the sigmoid form there too, to rule the
    approximation in or out on a GPU; so does a GPU before sm_75, which lacks ``tanh.approx``),
    the sigmoid form for fp32; the GPU's approximate MUFU instructions except under the
    interpreter. A ``meta`` device (the kernel report) counts as an H100."""
    mode = os.environ.get("FASTMBCONV_SILU", "auto")
    if mode not in ("auto", "sigmoid"):
        raise ValueError(f"FASTMBCONV_SILU must be 'auto' or 'sigmoid', got {mode!r}")
    tanh = dtype != torch.float32 and mode == "auto"
    if tanh and device.type == "cuda":
        tanh = cuda_capability(cuda_index(device)) >= (7, 5)
    return 2 * tanh + (not interpreting())


def cuda_index(device: torch.device) -> int:
    """The index of CUDA ``device``: the current device's for a bare ``cuda``."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def cuda_capability(device_index: int) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA device ``device_index``; asked once per device,
    as every launch needs it (the SiLU form, the autotuner's picks)."""
    return tuple(torch.cuda.get_device_capability(device_index))


# An H100's shared memory (per SM, and what one program may opt in to): what the kernel report
# (meta) and the interpreter size their programs for
H100_SHARED = (228 * 1024, 227 * 1024)


def shared_limits(device: torch.device) -> tuple[int, int]:
    """(bytes per SM, bytes one program may have) of ``device``'s shared memory: an H100's on
    ``meta`` and under the interpreter."""
    if device.type != "cuda" or interpreting():
        return H100_SHARED
    return _cuda_shared_limits(cuda_index(device))


@functools.lru_cache(maxsize=None)
def _cuda_shared_limits(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return (getattr(props, "shared_memory_per_multiprocessor", H100_SHARED[0]),
            getattr(props, "shared_memory_per_block_optin", H100_SHARED[1]))


def autocast_off(device: torch.device):
    """A context with autocast off on ``device``: the kernels' torch stand-ins compute in their
    inputs' dtype, as the kernels they stand in for do."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def use_autotune() -> bool:
    """Autotune block sizes on a real GPU unless ``FASTMBCONV_AUTOTUNE=0`` (then one heuristic
    config is used). Never under the interpreter, whose autotuner cannot benchmark."""
    return not interpreting() and os.environ.get("FASTMBCONV_AUTOTUNE", "1") != "0"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def batch_bucket(n: int) -> int:
    """The batch size class autotuning keys on (1, up to 8, up to 64, more): the best tiles
    for batch 1 and batch 256 differ, and whichever ran first must not fix them for the other."""
    return 1 if n <= 1 else 8 if n <= 8 else 64 if n <= 64 else 512


def reach(t: torch.Tensor, first_dim: int = 0) -> int:
    """The largest element offset of ``t`` from its first element, over dims ``first_dim`` on."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[first_dim:], t.stride()[first_dim:]) if size > 0)


def needs_int64(*tensors: torch.Tensor, per_sample: bool = True, window: int = 0) -> bool:
    """Whether an offset into any of these (N, ...) tensors can pass 2^31 - 1, so the kernel
    must do its address arithmetic in 64 bits. ``per_sample``: offsets inside one image only
    (kernels that add the image's base offset in 64 bits on their own). ``window``: the rows and
    columns (k - 1 for a k x k conv) by which a conv's offsets reach past each edge of the map:
    the kernels form a tile's first-tap or halo offset there in 32 bits and step back into the
    image from it, so those partial offsets must not wrap either. It is added to every tensor's
    reach (more than an output needs, which costs nothing but an earlier switch to 64 bits)."""
    first = 1 if per_sample else 0
    return any(reach(t, first) + window * sum(abs(s) for s in t.stride()[-2:]) >= 2**31 - 1 for t in tensors)


# CUDA's limit on a launch grid's programs along each axis (x, y, z); past it the driver only
# says "invalid argument"
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def check_grid(op: str, grid, axes, kernel=None, config: dict | None = None, upper=None) -> None:
    """Refuse, naming what sets its size (``axes``: per axis, e.g. "2000000 channels"), a launch
    grid past :data:`GRID_LIMITS`. ``grid``: a tuple, or a function of the config, checked at
    ``config``, or where ``kernel`` is an autotuner that picks the rest of the config, at each of
    its configs merged with ``config`` (the largest grid any of them could launch). ``upper``:
    per axis, a count no grid can pass (blocks of one); within the limits, nothing more is
    computed (this runs on every launch)."""
    if upper is not None and all(u <= limit for u, limit in zip(upper, GRID_LIMITS)):
        return
    if callable(grid):
        tuned = getattr(kernel, "configs", None)  # a triton.autotune wrapper: its choices
        metas = [{**c.kwargs, **(config or {})} for c in tuned] if tuned else [config or {}]
        sizes = [grid(meta) for meta in metas]
        grid = tuple(max(size[axis] for size in sizes) for axis in range(len(sizes[0])))
    for axis, (programs, limit, what) in enumerate(zip(grid, GRID_LIMITS, axes)):
        if programs > limit:
            raise ValueError(f"{op}: {what} would take {programs} programs along launch-grid axis {axis}, past "
                             f"CUDA's limit of {limit}")


def refuse_grad(op: str, what: str, why: str, *tensors) -> None:
    """Refuse, by name, a call that autograd would differentiate wrongly (``what`` has no
    gradient of its own, ``why``), where grad mode is on and any of ``tensors`` requires grad."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op}: {what} is inference-only ({why}); call it under torch.no_grad(), or use the "
                           f"reference model to train")


def check_no_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """Refuse to write in place into a tensor whose elements share memory (an ``expand``ed one):
    each program would apply the op to what another already wrote. As torch's in-place ops,
    only a certain overlap is refused (1: yes; 2: too hard to tell, as for most strided views)."""
    if torch._debug_has_internal_overlap(t) == 1:
        raise ValueError(f"{op}: {name} is written in place, but more than one of its elements refers to the "
                         f"same memory location (an expanded tensor?); pass {name}.clone() or a contiguous tensor")


def spatial_tile(height: int, width: int, max_pixels: int = 64) -> tuple[int, int]:
    """A (rows, cols) power-of-two output tile of 32 to ``max_pixels`` pixels that wastes the
    fewest pixel slots on an ``height`` x ``width`` map (ties: more pixels, then wider): the most
    on large maps, fewer where that fits better (2x16 on 14x14, where 8x8 tiles would leave a
    quarter idle)."""
    best = None
    for pixels in (p for p in (128, 64, 32) if p <= max_pixels):
        for tw in (1, 2, 4, 8, 16, 32, 64):
            th = pixels // tw
            if th < 1:
                continue
            key = (-(-height // th) * th * -(-width // tw) * tw, -pixels, -tw)
            if best is None or key < best[0]:
                best = (key, (th, tw))
    return best[1]


def check_tensor(op: str, name: str, t, ndim: int | None = None, dtypes=FLOAT_DTYPES, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the input is on {device}")


def check_1x1_weight(op: str, name: str, w, x: torch.Tensor, out_letter: str) -> int:
    """A 1x1 conv weight for ``x``: its dtype and device, shape (O, K) or (O, K, 1, 1) with K the
    input's channels; returns O."""
    K = x.shape[1]
    check_tensor(op, name, w, device=x.device)
    if w.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {w.dtype} must match the input's {x.dtype}")
    if w.ndim not in (2, 4) or w.shape[1] != K or w.numel() != w.shape[0] * K:
        raise ValueError(f"{op}: {name} must be ({out_letter}, {K}) or ({out_letter}, {K}, 1, 1) for an input with "
                         f"{K} channels, got {tuple(w.shape)}")
    return w.shape[0]


def check_activation(op: str, name: str, act: str) -> None:
    if act not in ACT_CODES:
        raise ValueError(f"{op}: unknown {name} {act!r}; expected one of {ACTIVATIONS}")


def output_size(height: int, width: int, kernel: int, stride: int, padding) -> tuple[int, int]:
    """Output height and width of a ``kernel`` x ``kernel`` conv; ``padding`` is (top, bottom,
    left, right)."""
    top, bottom, left, right = padding
    return (height + top + bottom - kernel) // stride + 1, (width + left + right - kernel) // stride + 1


def check_conv_geometry(op: str, H: int, W: int, k: int, stride, padding, act: str):
    """Stride 1 or 2, four paddings in [0, k), a known activation and a non-empty output;
    returns (padding as a tuple of ints, H_out, W_out)."""
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")
    padding = tuple(int(p) for p in padding)
    if len(padding) != 4 or min(padding) < 0 or max(padding) >= k:
        raise ValueError(f"{op}: padding must be 4 values (top, bottom, left, right) in [0, {k}), got {padding}")
    check_activation(op, "act", act)
    H_out, W_out = output_size(H, W, k, stride, padding)
    if H_out < 1 or W_out < 1:
        raise ValueError(f"{op}: input {H}x{W} with padding {padding} is too small for a {k}x{k} kernel")
    return padding, H_out, W_out


def check_ragged_args(op: str, N: int, valid_hw, pad_tl, device) -> None:
    """A ragged batch's per-image sizes and paddings: both or neither, each (N, 2) int32."""
    if (valid_hw is None) != (pad_tl is None):
        raise ValueError(f"{op}: valid_hw and pad_tl must be given together (ragged batch) or not at all")
    for name, t in (("valid_hw", valid_hw), ("pad_tl", pad_tl)):
        if t is not None:
            check_tensor(op, name, t, ndim=2, dtypes=(torch.int32,), device=device)
            if t.shape != (N, 2):
                raise ValueError(f"{op}: {name} must have shape ({N}, 2), got {tuple(t.shape)}")


def check_valid_sizes(op: str, valid_hw, H: int, W: int, pad_tl=None, kernel: int = 0) -> None:
    """Each image's valid (h, w) in [1, H] x [1, W], and its (top, left) padding for a ``kernel``
    x ``kernel`` conv in [0, kernel - 1] (the most either convention pads). Checked here for CPU
    tensors only (on CUDA the check would sync every call); the kernels clamp sizes into [0, H] x
    [0, W] and mask every load by its row and column either way, so a bad value never reads
    outside the input."""
    if valid_hw is not None and valid_hw.device.type == "cpu":
        if (valid_hw < 1).any() or (valid_hw[:, 0] > H).any() or (valid_hw[:, 1] > W).any():
            raise ValueError(f"{op}: valid_hw must lie in [1, {H}] x [1, {W}], got {valid_hw.tolist()}")
    if pad_tl is not None and pad_tl.device.type == "cpu" and ((pad_tl < 0).any() or (pad_tl >= kernel).any()):
        raise ValueError(f"{op}: pad_tl (each image's top and left padding) must lie in [0, {kernel - 1}] for a "
                         f"{kernel}x{kernel} conv, got {pad_tl.tolist()}")


def dense_rows(*tensors: torch.Tensor) -> bool:
    """Whether every (N, C, H, W) tensor's pixels are evenly spaced (one stride steps from pixel
    to pixel, across rows and images): then a row's offset is m * stride, with no division."""
    for t in tensors:
        n, _, h, w = t.shape
        sn, _, sh, sw = t.stride()
        if (h > 1 and sh != w * sw) or (n > 1 and sn != h * w * sw):
            return False
    return True


def is_channels_last(x: torch.Tensor) -> bool:
    """True if ``x`` (4-D) is laid out NHWC; outputs follow the input's memory format."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def empty_like_format(x: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def valid_pixel_counts(valid_hw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 1) pixels of each image's valid region of a ragged batch, sizes clamped into the map
    and an empty image counted as 1 (its mean is then 0), as the pool kernels count them."""
    hw = torch.stack([valid_hw[:, 0].clamp(0, height), valid_hw[:, 1].clamp(0, width)], 1)
    return hw.prod(1, keepdim=True).clamp_min(1)


def valid_mask(valid_hw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean (N, H, W) mask of each image's valid top-left (h, w) region of a ragged batch."""
    rows = torch.arange(height, device=valid_hw.device)[None, :, None] < valid_hw[:, 0, None, None]
    cols = torch.arange(width, device=valid_hw.device)[None, None, :] < valid_hw[:, 1, None, None]
    return rows & cols


def conv2d_ref(x, weight, bias, padding, stride: int, groups: int = 1, valid_hw=None, pad_tl=None):
    """``F.conv2d`` with ``padding`` (top, bottom, left, right) zeros. With ``valid_hw``/``pad_tl``
    (N, 2), a ragged batch: image n reads only its valid (h, w) corner, padded by its own
    (top, left), and the output keeps the batch's (H_out, W_out)."""
    top, bottom, left, right = padding
    if valid_hw is None:
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride=stride, groups=groups)
    k = weight.shape[-1]
    H, W = x.shape[-2:]
    H_out, W_out = output_size(H, W, k, stride, padding)
    ys = []
    for n in range(x.shape[0]):
        h, w = (int(v) for v in valid_hw[n])
        t, lft = (int(v) for v in pad_tl[n])
        xn = torch.zeros_like(x[n:n + 1])
        xn[..., :h, :w] = x[n:n + 1, :, :h, :w]
        pb, pr = max(0, (H_out - 1) * stride + k - t - H), max(0, (W_out - 1) * stride + k - lft - W)
        ys.append(F.conv2d(F.pad(xn, (lft, pr, t, pb)), weight, bias, stride=stride, groups=groups)[..., :H_out, :W_out])
    return torch.cat(ys) if ys else x.new_zeros((0, weight.shape[0], H_out, W_out))


def zero_invalid_ref(y: torch.Tensor, valid_hw, stride: int) -> torch.Tensor:
    """``y`` with each ragged image's outputs past its valid (ceil(h / stride), ceil(w /
    stride)) corner set to 0; ``y`` itself when the batch is not ragged."""
    if valid_hw is None:
        return y
    valid_out = (valid_hw.long() + stride - 1) // stride
    return torch.where(valid_mask(valid_out, *y.shape[-2:])[:, None], y, y.new_zeros(()))


def activation_ref(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "silu":
        return F.silu(x)
    if act == "relu6":
        return x.clamp(0.0, 6.0)
    return x
