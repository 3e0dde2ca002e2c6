"""Analytic roofline of EfficientNet inference: FLOPs and the fewest HBM bytes per fusion level.

The model structure is walked block by block (no tensors are computed), and every op is given
the bytes it must read and write at three levels of fusion:

``eager``
    every conv, BN, activation, SE step and residual add is its own kernel that reads its
    inputs from and writes its output to device memory (what eager PyTorch/cuDNN does).
``layer_fused``
    BN folded into the convs; expand 1x1 + BN + SiLU one kernel; depthwise + BN + SiLU one kernel
    with the SE pool in its epilogue; the SE gate a tiny kernel; the project 1x1 applies the
    gate in its prologue and adds bias and residual in its epilogue; the head conv + BN + SiLU
    + global pool writes only the pooled vector (what ``fastmbconv``'s fused path does).
``whole_block``
    only each block's input and output touch device memory (the expanded tensors stay on chip).

Weights are read once per forward pass (per batch), at the activation dtype. Sizes per image
are totals divided by the batch, so weights are amortised over the batch. FLOPs are
2 x multiply-accumulates of the convs and the classifier, the way ``torch.utils.flop_counter``
counts them (BN, activations and pools are counted as memory traffic, not FLOPs).

:func:`measure_copy_bandwidth` measures the memory ceiling on the device in the same run, and
:func:`floor_seconds` / :func:`floor_fraction` turn bytes into a time floor and a measured time
into a fraction of it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

LEVELS: tuple[str, ...] = ("eager", "layer_fused", "whole_block")
LEVEL_TITLES = {
    "eager": "eager (every conv, BN, activation reads and writes)",
    "layer_fused": "layer-fused (BN folded; dw+BN+SiLU+pool; gate and residual in the project 1x1)",
    "whole_block": "whole block fused (only block inputs/outputs touch HBM)",
}
KINDS: tuple[str, ...] = ("stem", "1x1", "depthwise", "se", "elementwise", "head", "classifier")

_DTYPE_BYTES = {
    torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8,
    "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4,
}


def dtype_bytes(dtype) -> int:
    try:
        return _DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use fp16, bf16 or fp32") from None


@dataclass(frozen=True)
class Op:
    """One op of one level: what it reads and writes in device memory (bytes, whole batch)."""

    layer: str  # module path, e.g. "blocks.1.0.conv_dw"
    kind: str  # one of KINDS
    flops: int
    read: int
    written: int
    weight_bytes: int = 0  # included in ``read``

    @property
    def bytes(self) -> int:
        return self.read + self.written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte moved."""
        return self.flops / self.bytes if self.bytes else 0.0


@dataclass
class Roofline:
    """Per-level op lists for one (model, resolution, batch, dtype)."""

    model: str
    resolution: tuple[int, int]
    batch: int
    dtype: str
    ops: dict[str, list[Op]] = field(default_factory=dict)

    def bytes(self, level: str) -> int:
        return sum(op.bytes for op in self._level(level))

    def bytes_per_image(self, level: str) -> float:
        return self.bytes(level) / self.batch

    def weight_bytes(self, level: str = "eager") -> int:
        return sum(op.weight_bytes for op in self._level(level))

    @property
    def flops(self) -> int:
        """FLOPs of the whole batch (the same at every level)."""
        return sum(op.flops for op in self.ops["eager"])

    def intensity(self, level: str) -> float:
        return self.flops / self.bytes(level)

    def by_kind(self, level: str) -> dict[str, dict[str, float]]:
        """FLOPs and bytes summed per op kind (depthwise, se, 1x1, ...)."""
        out: dict[str, dict[str, float]] = {}
        for op in self._level(level):
            d = out.setdefault(op.kind, {"flops": 0, "bytes": 0, "ops": 0})
            d["flops"] += op.flops
            d["bytes"] += op.bytes
            d["ops"] += 1
        for d in out.values():
            d["intensity"] = d["flops"] / d["bytes"] if d["bytes"] else 0.0
        return out

    def summary(self) -> dict:
        """Flat dict for JSON / ``benchmark.extra_info``."""
        d = {"flops": self.flops}
        for level in LEVELS:
            d[f"bytes_{level}"] = self.bytes(level)
            d[f"mb_per_image_{level}"] = self.bytes_per_image(level) / 1e6
        return d

    def _level(self, level: str) -> list[Op]:
        if level not in self.ops:
            raise ValueError(f"unknown fusion level {level!r}; expected one of {LEVELS}")
        return self.ops[level]


# ---------------------------------------------------------------------- the walk
def _out_size(size: int, stride: int) -> int:
    # Both padding conventions (k//2 and TF SAME) give ceil(size / stride) for odd kernels.
    return -(-size // stride)


class _Builder:
    def __init__(self, batch: int, itemsize: int):
        self.n, self.b = batch, itemsize
        self.ops = {level: [] for level in LEVELS}

    def act(self, c: int, h: int, w: int) -> int:
        """Bytes of one (batch, c, h, w) activation."""
        return self.n * c * h * w * self.b

    def vec(self, c: int, itemsize: int | None = None) -> int:
        """Bytes of one (batch, c) vector."""
        return self.n * c * (itemsize or self.b)

    def add(self, levels: Iterable[str], layer: str, kind: str, read: int, written: int,
            flops: int = 0, weights: int = 0) -> None:
        for level in levels:
            self.ops[level].append(Op(layer, kind, int(flops), int(read + weights), int(written), int(weights)))


_ALL = LEVELS
_EAGER = ("eager",)
_FUSED = ("layer_fused",)
_BLOCK = ("whole_block",)
_FUSED_AND_BLOCK = ("layer_fused", "whole_block")


def _block_ops(bld: _Builder, name: str, block, h: int, w: int) -> tuple[int, int]:
    """Add one MBConv / DepthwiseSeparable block; returns the output (h, w)."""
    cin, cout, k, s = block.in_channels, block.out_channels, block.kernel, block.stride
    mid = getattr(block, "mid_channels", cin)
    has_expand = hasattr(block, "conv_pwl")  # MBConv
    r = block.se.conv_reduce.out_channels
    ho, wo = _out_size(h, s), _out_size(w, s)
    n, b = bld.n, bld.b
    x, e, d, p = bld.act(cin, h, w), bld.act(mid, h, w), bld.act(mid, ho, wo), bld.act(cout, ho, wo)
    f_expand = 2 * n * cin * mid * h * w if has_expand else 0
    f_dw = 2 * n * mid * k * k * ho * wo
    f_se = 2 * n * (mid * r + r * mid)
    f_proj = 2 * n * mid * cout * ho * wo
    w_expand, w_dw = cin * mid * b, mid * k * k * b
    w_se = (mid * r + r + r * mid + mid) * b
    w_proj = mid * cout * b
    bn = lambda c: 4 * c * b  # weight, bias, running mean, running var  # noqa: E731
    pw_name, proj_name = (f"{name}.conv_pw", f"{name}.conv_pwl") if has_expand else (None, f"{name}.conv_pw")
    bn_dw, bn_proj = (f"{name}.bn2", f"{name}.bn3") if has_expand else (f"{name}.bn1", f"{name}.bn2")

    # eager: each op reads and writes its tensors
    if has_expand:
        bld.add(_EAGER, pw_name, "1x1", x, e, f_expand, w_expand)
        bld.add(_EAGER, f"{name}.bn1", "elementwise", e, e, weights=bn(mid))
        bld.add(_EAGER, f"{name}.silu1", "elementwise", e, e)
    bld.add(_EAGER, f"{name}.conv_dw", "depthwise", e, d, f_dw, w_dw)
    bld.add(_EAGER, bn_dw, "elementwise", d, d, weights=bn(mid))
    bld.add(_EAGER, f"{name}.silu_dw", "elementwise", d, d)
    bld.add(_EAGER, f"{name}.se.pool", "se", d, bld.vec(mid))
    bld.add(_EAGER, f"{name}.se.conv_reduce", "se", bld.vec(mid), bld.vec(r), 2 * n * mid * r, (mid * r + r) * b)
    bld.add(_EAGER, f"{name}.se.silu", "se", bld.vec(r), bld.vec(r))
    bld.add(_EAGER, f"{name}.se.conv_expand", "se", bld.vec(r), bld.vec(mid), 2 * n * r * mid, (r * mid + mid) * b)
    bld.add(_EAGER, f"{name}.se.sigmoid", "se", bld.vec(mid), bld.vec(mid))
    bld.add(_EAGER, f"{name}.se.scale", "elementwise", d + bld.vec(mid), d)
    bld.add(_EAGER, proj_name, "1x1", d, p, f_proj, w_proj)
    bld.add(_EAGER, bn_proj, "elementwise", p, p, weights=bn(cout))
    if block.has_skip:
        bld.add(_EAGER, f"{name}.residual", "elementwise", p + x, p)

    # layer-fused: BN folded (a per-channel bias instead), four kernels per block
    if has_expand:
        bld.add(_FUSED, pw_name, "1x1", x, e, f_expand, w_expand + mid * b)
    bld.add(_FUSED, f"{name}.conv_dw", "depthwise", e, d + bld.vec(mid, 4), f_dw, w_dw + 2 * mid * b)
    bld.add(_FUSED, f"{name}.se", "se", bld.vec(mid, 4), bld.vec(mid, 4), f_se, w_se)
    bld.add(_FUSED, proj_name, "1x1", d + bld.vec(mid, 4) + (x if block.has_skip else 0), p, f_proj,
            w_proj + cout * b)

    # whole block: input in, output out, all weights once
    w_all = w_expand + w_dw + w_se + w_proj + (mid * b if has_expand else 0) + 2 * mid * b + cout * b
    bld.add(_BLOCK, name, "1x1", x, p, f_expand + f_dw + f_se + f_proj, w_all)
    return ho, wo


def _efficientnet_ops(bld: _Builder, model, h: int, w: int) -> None:
    b = bld.b
    cin, cs = model.in_chans, model.conv_stem.out_channels
    ho, wo = _out_size(h, 2), _out_size(w, 2)
    xin, s = bld.act(cin, h, w), bld.act(cs, ho, wo)
    f_stem = 2 * bld.n * cin * cs * 9 * ho * wo
    w_stem = cin * cs * 9 * b
    bld.add(_EAGER, "conv_stem", "stem", xin, s, f_stem, w_stem)
    bld.add(_EAGER, "bn1", "elementwise", s, s, weights=4 * cs * b)
    bld.add(_EAGER, "silu_stem", "elementwise", s, s)
    bld.add(_FUSED_AND_BLOCK, "conv_stem", "stem", xin, s, f_stem, w_stem + cs * b)
    h, w = ho, wo
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            h, w = _block_ops(bld, f"blocks.{i}.{j}", block, h, w)
    if getattr(model, "features_only", False):
        return
    c_last, ch = model.conv_head.in_channels, model.conv_head.out_channels
    x, hd = bld.act(c_last, h, w), bld.act(ch, h, w)
    f_head = 2 * bld.n * c_last * ch * h * w
    w_head = c_last * ch * b
    bld.add(_EAGER, "conv_head", "head", x, hd, f_head, w_head)
    bld.add(_EAGER, "bn2", "elementwise", hd, hd, weights=4 * ch * b)
    bld.add(_EAGER, "silu_head", "elementwise", hd, hd)
    bld.add(_EAGER, "global_pool", "elementwise", hd, bld.vec(ch))
    bld.add(_FUSED_AND_BLOCK, "conv_head", "head", x, bld.vec(ch, 4), f_head, w_head + ch * b)
    if isinstance(model.classifier, nn.Linear):
        nc = model.classifier.out_features
        bld.add(_ALL, "classifier", "classifier", bld.vec(ch), bld.vec(nc), 2 * bld.n * ch * nc, (ch * nc + nc) * b)


def roofline(model_or_name, resolution: int | tuple[int, int] | None = None, batch: int = 1,
             dtype="fp16") -> Roofline:
    """The analytic roofline of an EfficientNet (a module, or a name such as ``"efficientnet_b0"``
    or ``"b0"``) at ``resolution`` (default: the model's native one), ``batch`` and ``dtype``."""
    model = _resolve(model_or_name)
    if resolution is None:
        resolution = getattr(model, "default_resolution", 224)
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if batch < 1 or h < 1 or w < 1:
        raise ValueError(f"roofline: batch and resolution must be >= 1, got batch={batch}, {h}x{w}")
    bld = _Builder(batch, dtype_bytes(dtype))
    if not hasattr(model, "conv_stem") or not hasattr(model, "blocks"):
        raise TypeError(f"roofline: expected a fastmbconv EfficientNet, got {type(model).__name__}")
    _efficientnet_ops(bld, model, h, w)
    name = getattr(model, "variant", type(model).__name__)
    return Roofline(name, (h, w), batch, _dtype_name(dtype), bld.ops)


def _dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)


_MODEL_CACHE: dict[str, nn.Module] = {}


def _resolve(model_or_name):
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    from .model import MODEL_BUILDERS

    name = str(model_or_name)
    if name not in MODEL_BUILDERS:
        name = f"efficientnet_{name}"
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {model_or_name!r}; expected one of {sorted(MODEL_BUILDERS)}")
    if name not in _MODEL_CACHE:
        with torch.device("meta"):  # structure only: no memory, no init cost
            _MODEL_CACHE[name] = MODEL_BUILDERS[name]()
    return _MODEL_CACHE[name]


# ---------------------------------------------------------------------- kernel shapes
@dataclass(frozen=True)
class BlockShape:
    """The tensor shapes one block's kernels see (per image; the batch is the caller's)."""

    name: str
    in_channels: int
    mid_channels: int
    out_channels: int
    se_channels: int
    kernel: int
    stride: int
    height: int  # input
    width: int
    out_height: int
    out_width: int
    has_expand: bool
    has_skip: bool


def block_shapes(model_or_name, resolution: int | tuple[int, int] | None = None) -> list[BlockShape]:
    """Every MBConv / DepthwiseSeparable block of an EfficientNet at ``resolution`` (default:
    native), derived from the model structure: the shapes its depthwise, SE and 1x1 kernels see."""
    model = _resolve(model_or_name)
    if resolution is None:
        resolution = getattr(model, "default_resolution", 224)
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    h, w = _out_size(h, 2), _out_size(w, 2)  # the stem
    shapes = []
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            ho, wo = _out_size(h, block.stride), _out_size(w, block.stride)
            shapes.append(BlockShape(
                f"blocks.{i}.{j}", block.in_channels, getattr(block, "mid_channels", block.in_channels),
                block.out_channels, block.se.conv_reduce.out_channels, block.kernel, block.stride,
                h, w, ho, wo, hasattr(block, "conv_pwl"), block.has_skip))
            h, w = ho, wo
    return shapes


# ---------------------------------------------------------------------- the measured ceiling
@dataclass(frozen=True)
class Bandwidth:
    """A measured copy bandwidth (bytes read + bytes written per second)."""

    bytes_per_s: float
    device: str
    kind: str  # "device copy (HBM)" or "host memcpy (system RAM)"
    nbytes: int
    method: str

    @property
    def gb_s(self) -> float:
        return self.bytes_per_s / 1e9

    def as_dict(self) -> dict:
        return {"gb_s": self.gb_s, "device": self.device, "kind": self.kind,
                "buffer_mb": self.nbytes / 1e6, "method": self.method}


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure_copy_bandwidth(device="cuda", nbytes: int | None = None, iters: int | None = None) -> Bandwidth:
    """Measure copy bandwidth on ``device`` now, with ``dst.copy_(src)`` of a large buffer.

    CUDA: device-to-device copy of a buffer far larger than L2 (1 GiB by default), timed with
    CUDA events over several copies after a warm-up; bandwidth counts the bytes read plus the
    bytes written. CPU: the same copy in host memory (a memcpy), labelled as host memory."""
    device = torch.device(device)
    if device.type == "cuda":
        nbytes = nbytes or (1 << 30)
        iters = iters or 20
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize(device)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        med = sorted(times)[len(times) // 2]
        del src, dst
        return Bandwidth(2 * nbytes / med, device_name(device), "device copy (HBM)", nbytes,
                         f"median of {iters} device-to-device copy_ timed with CUDA events")
    nbytes = nbytes or (64 << 20)
    iters = iters or 5
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return Bandwidth(2 * nbytes / med, device_name(device), "host memcpy (system RAM)", nbytes,
                     f"median of {iters} host copy_ of {nbytes >> 20} MiB timed with perf_counter")


def floor_seconds(nbytes: float, bandwidth: Bandwidth | float) -> float:
    """Time to move ``nbytes`` at the measured bandwidth (bytes/s or a :class:`Bandwidth`)."""
    bw = bandwidth.bytes_per_s if isinstance(bandwidth, Bandwidth) else float(bandwidth)
    return nbytes / bw if bw > 0 else math.nan


def floor_fraction(seconds: float, nbytes: float, bandwidth: Bandwidth | float) -> float:
    """Fraction of the memory floor reached: floor time / measured time (1.0 = at the floor)."""
    if not seconds or seconds <= 0:
        return math.nan
    return floor_seconds(nbytes, bandwidth) / seconds


def efficiency(seconds: float, roof: Roofline, bandwidth: Bandwidth | float | None) -> dict:
    """Achieved TFLOP/s, the GB/s each level's bytes imply, and the fraction of each floor."""
    d = {"tflops": roof.flops / seconds / 1e12 if seconds > 0 else math.nan}
    for level in LEVELS:
        nb = roof.bytes(level)
        d[f"gb_s_{level}"] = nb / seconds / 1e9 if seconds > 0 else math.nan
        if bandwidth is not None:
            d[f"floor_ms_{level}"] = floor_seconds(nb, bandwidth) * 1e3
            d[f"floor_fraction_{level}"] = floor_fraction(seconds, nb, bandwidth)
    return d


def format_table(roofs: Iterable[Roofline], bandwidth: Bandwidth | None = None) -> str:
    """Markdown: MB per image at each level (and the floor in images/s at ``bandwidth``)."""
    head = "| model | resolution | batch | dtype | GFLOP/img | " + " | ".join(
        f"MB/img {lv}" for lv in LEVELS) + " |"
    if bandwidth is not None:
        head += " " + " | ".join(f"floor img/s {lv}" for lv in LEVELS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in roofs:
        row = (f"| {r.model} | {r.resolution[0]}x{r.resolution[1]} | {r.batch} | {r.dtype} | "
               f"{r.flops / r.batch / 1e9:.3f} | "
               + " | ".join(f"{r.bytes_per_image(lv) / 1e6:.2f}" for lv in LEVELS) + " |")
        if bandwidth is not None:
            row += " " + " | ".join(
                f"{bandwidth.bytes_per_s / r.bytes_per_image(lv):,.0f}" for lv in LEVELS) + " |"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> None:  # python -m fastmbconv.roofline
    import argparse

    from .model import MODEL_BUILDERS

    p = argparse.ArgumentParser(description="Analytic HBM-traffic floor of EfficientNet per fusion level")
    p.add_argument("--models", default="b0,b1,b2,b3,b4,b5,b6,b7")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--resolution", type=int, default=None, help="default: each model's native one")
    p.add_argument("--measure", action="store_true", help="measure copy bandwidth on the device present")
    a = p.parse_args(argv)
    names = [m if m in MODEL_BUILDERS else f"efficientnet_{m}" for m in a.models.split(",")]
    bw = None
    if a.measure:
        bw = measure_copy_bandwidth("cuda" if torch.cuda.is_available() else "cpu")
        print(f"measured {bw.kind} on {bw.device}: {bw.gb_s:.1f} GB/s ({bw.method})")
    print(format_table([roofline(n, a.resolution, a.batch, a.dtype) for n in names], bw))


if __name__ == "__main__":
    main()
