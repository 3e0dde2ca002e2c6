"""Analytic roofline of EfficientNet inference: FLOPs and the fewest HBM bytes per fusion level.

The model structure is walked block by block (no tensors are computed), and every op is given
the bytes it must read and write at four levels of fusion:

``eager``
    every conv, BN, activation, SE step and residual add is its own kernel that reads its
    inputs from and writes its output to device memory (what eager PyTorch/cuDNN does).
``layer_fused``
    BN folded into the convs; expand 1x1 + BN + SiLU one kernel; depthwise + BN + SiLU one kernel
    with the SE pool in its epilogue; the SE gate a tiny kernel; the project 1x1 applies the
    gate in its prologue and adds bias and residual in its epilogue; the head conv + BN + SiLU
    + global pool writes only the pooled vector (what ``fastmbconv``'s fused path does).
``expand_dw_fused``
    ``layer_fused`` with each block's expand 1x1 and depthwise conv as one kernel that reads the
    block input and writes only the depthwise output (the expanded tensor never touches device
    memory; what ``fastmbconv``'s ``expand_dwconv`` does, counting its halo re-reads as L2 hits).
``whole_block``
    only each block's input and output touch device memory (the expanded tensors stay on chip).

Weights are read once per forward pass (per batch), at the activation dtype. Sizes per image
are totals divided by the batch, so weights are amortised over the batch. FLOPs are
2 x multiply-accumulates of the convs and the classifier, the way ``torch.utils.flop_counter``
counts them (BN, activations and pools are counted as memory traffic, not FLOPs).

The measured side (copy bandwidth, floor fractions of a timing) lives in
:mod:`fastmbconv.study.bandwidth`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from .builders import model_structure
from .shapes import LayerShape, walk

LEVELS: tuple[str, ...] = ("eager", "layer_fused", "expand_dw_fused", "whole_block")
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
_LAYER = ("layer_fused",)  # the expand and depthwise kernels of the layer-by-layer path
_EXPAND_DW = ("expand_dw_fused",)
_FUSED = ("layer_fused", "expand_dw_fused")  # kernels both fused paths share
_BLOCK = ("whole_block",)
_FUSED_AND_BLOCK = ("layer_fused", "expand_dw_fused", "whole_block")


def _block_ops(bld: _Builder, layer: LayerShape) -> None:
    """Add one MBConv / DepthwiseSeparable block at every level."""
    cin, mid, cout, se = layer.in_channels, layer.mid_channels, layer.out_channels, layer.se_channels
    parts, name, batch, itemsize = layer.parts, layer.name, bld.n, bld.b
    block_in = bld.act(cin, layer.height, layer.width)
    expanded = bld.act(mid, layer.height, layer.width)
    dw_out = bld.act(mid, layer.out_height, layer.out_width)
    block_out = bld.act(cout, layer.out_height, layer.out_width)
    out_pixels = layer.out_height * layer.out_width
    flops_expand = 2 * batch * cin * mid * layer.height * layer.width if layer.has_expand else 0
    flops_dw = 2 * batch * mid * layer.kernel ** 2 * out_pixels
    flops_se = 2 * batch * (mid * se + se * mid)
    flops_project = 2 * batch * mid * cout * out_pixels
    w_expand = cin * mid * itemsize if layer.has_expand else 0
    w_dw = mid * layer.kernel ** 2 * itemsize
    w_se = (mid * se + se + se * mid + mid) * itemsize
    w_project = mid * cout * itemsize

    def bn(c: int) -> int:  # weight, bias, running mean, running var
        return 4 * c * itemsize

    dw_name, project_name = f"{name}.{parts.depthwise.conv_name}", f"{name}.{parts.project.conv_name}"

    # eager: each op reads and writes its tensors
    if layer.has_expand:
        bld.add(_EAGER, f"{name}.{parts.expand.conv_name}", "1x1", block_in, expanded, flops_expand, w_expand)
        bld.add(_EAGER, f"{name}.{parts.expand.bn_name}", "elementwise", expanded, expanded, weights=bn(mid))
        bld.add(_EAGER, f"{name}.silu_expand", "elementwise", expanded, expanded)
    bld.add(_EAGER, dw_name, "depthwise", expanded, dw_out, flops_dw, w_dw)
    bld.add(_EAGER, f"{name}.{parts.depthwise.bn_name}", "elementwise", dw_out, dw_out, weights=bn(mid))
    bld.add(_EAGER, f"{name}.silu_dw", "elementwise", dw_out, dw_out)
    bld.add(_EAGER, f"{name}.se.pool", "se", dw_out, bld.vec(mid))
    bld.add(_EAGER, f"{name}.se.conv_reduce", "se", bld.vec(mid), bld.vec(se), 2 * batch * mid * se, (mid * se + se) * itemsize)
    bld.add(_EAGER, f"{name}.se.silu", "se", bld.vec(se), bld.vec(se))
    bld.add(_EAGER, f"{name}.se.conv_expand", "se", bld.vec(se), bld.vec(mid), 2 * batch * se * mid, (se * mid + mid) * itemsize)
    bld.add(_EAGER, f"{name}.se.sigmoid", "se", bld.vec(mid), bld.vec(mid))
    bld.add(_EAGER, f"{name}.se.scale", "elementwise", dw_out + bld.vec(mid), dw_out)
    bld.add(_EAGER, project_name, "1x1", dw_out, block_out, flops_project, w_project)
    bld.add(_EAGER, f"{name}.{parts.project.bn_name}", "elementwise", block_out, block_out, weights=bn(cout))
    if layer.has_skip:
        bld.add(_EAGER, f"{name}.residual", "elementwise", block_out + block_in, block_out)

    # layer-fused: BN folded (a per-channel bias instead), four kernels per block
    if layer.has_expand:
        bld.add(_LAYER, f"{name}.{parts.expand.conv_name}", "1x1", block_in, expanded, flops_expand,
                w_expand + mid * itemsize)
        bld.add(_LAYER, dw_name, "depthwise", expanded, dw_out + bld.vec(mid, 4), flops_dw,
                w_dw + 2 * mid * itemsize)
        # expand + depthwise in one kernel: the block input in, the depthwise output out
        bld.add(_EXPAND_DW, dw_name, "depthwise", block_in, dw_out + bld.vec(mid, 4), flops_expand + flops_dw,
                w_expand + mid * itemsize + w_dw + 2 * mid * itemsize)
    else:
        bld.add(_FUSED, dw_name, "depthwise", block_in, dw_out + bld.vec(mid, 4), flops_dw, w_dw + 2 * mid * itemsize)
    bld.add(_FUSED, f"{name}.se", "se", bld.vec(mid, 4), bld.vec(mid, 4), flops_se, w_se)
    bld.add(_FUSED, project_name, "1x1", dw_out + bld.vec(mid, 4) + (block_in if layer.has_skip else 0), block_out,
            flops_project, w_project + cout * itemsize)

    # whole block: input in, output out, all weights once
    w_all = (w_expand + w_dw + w_se + w_project + (mid * itemsize if layer.has_expand else 0) + 2 * mid * itemsize + cout * itemsize)
    bld.add(_BLOCK, name, "1x1", block_in, block_out, flops_expand + flops_dw + flops_se + flops_project, w_all)


def _stem_ops(bld: _Builder, layer: LayerShape) -> None:
    cin, cs, b = layer.in_channels, layer.out_channels, bld.b
    image, out = bld.act(cin, layer.height, layer.width), bld.act(cs, layer.out_height, layer.out_width)
    flops = 2 * bld.n * cin * cs * 9 * layer.out_height * layer.out_width
    weights = cin * cs * 9 * b
    bld.add(_EAGER, "conv_stem", "stem", image, out, flops, weights)
    bld.add(_EAGER, "bn1", "elementwise", out, out, weights=4 * cs * b)
    bld.add(_EAGER, "silu_stem", "elementwise", out, out)
    bld.add(_FUSED_AND_BLOCK, "conv_stem", "stem", image, out, flops, weights + cs * b)


def _head_ops(bld: _Builder, layer: LayerShape, classes: int) -> None:
    c_last, ch, b = layer.in_channels, layer.out_channels, bld.b
    x, head_map = bld.act(c_last, layer.height, layer.width), bld.act(ch, layer.height, layer.width)
    flops = 2 * bld.n * c_last * ch * layer.height * layer.width
    weights = c_last * ch * b
    bld.add(_EAGER, "conv_head", "head", x, head_map, flops, weights)
    bld.add(_EAGER, "bn2", "elementwise", head_map, head_map, weights=4 * ch * b)
    bld.add(_EAGER, "silu_head", "elementwise", head_map, head_map)
    bld.add(_EAGER, "global_pool", "elementwise", head_map, bld.vec(ch))
    # the pooled vector at the activation dtype, as pointwise_gated(pool_only=True) returns it
    bld.add(_FUSED_AND_BLOCK, "conv_head", "head", x, bld.vec(ch), flops, weights + ch * b)
    if classes:
        bld.add(_ALL, "classifier", "classifier", bld.vec(ch), bld.vec(classes), 2 * bld.n * ch * classes,
                (ch * classes + classes) * b)


def _efficientnet_ops(bld: _Builder, model, h: int, w: int) -> None:
    for layer in walk(model, h, w):
        if layer.kind == "stem":
            _stem_ops(bld, layer)
        elif layer.kind == "block":
            _block_ops(bld, layer)
        else:
            classes = model.classifier.out_features if isinstance(model.classifier, nn.Linear) else 0
            _head_ops(bld, layer, classes)


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


def _resolve(model_or_name):
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    return model_structure(str(model_or_name))


def format_table(roofs: Iterable[Roofline], bandwidth=None) -> str:
    """Markdown: MB per image at each level (and the floor in images/s at ``bandwidth``, a
    :class:`fastmbconv.study.bandwidth.Bandwidth`)."""
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

    from .builders import resolve_model_name

    p = argparse.ArgumentParser(description="Analytic HBM-traffic floor of EfficientNet per fusion level")
    p.add_argument("--models", default="b0,b1,b2,b3,b4,b5,b6,b7")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--resolution", type=int, default=None, help="default: each model's native one")
    p.add_argument("--measure", action="store_true", help="measure copy bandwidth on the device present")
    a = p.parse_args(argv)
    names = [resolve_model_name(m) for m in a.models.split(",")]
    bw = None
    if a.measure:
        from .study.bandwidth import measure_copy_bandwidth

        bw = measure_copy_bandwidth("cuda" if torch.cuda.is_available() else "cpu")
        print(f"measured {bw.kind} on {bw.device}: {bw.gb_s:.1f} GB/s ({bw.method})")
    print(format_table([roofline(n, a.resolution, a.batch, a.dtype) for n in names], bw))


if __name__ == "__main__":
    main()
