"""The project's speed targets, evaluated only from cases measured side by side in one run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .providers import RESNET, full_model_name


@dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    description: str


TARGETS: tuple[Target, ...] = (
    Target("fused_vs_eager", 2.0, "B0 224 fp16 batch 256: fused >= 2x reference eager"),
    Target("fused_vs_max_autotune", 1.5, 'B0 224 fp16 batch 256: fused >= 1.5x torch.compile(reference, "max-autotune")'),
    Target("fused_b0_vs_eager_resnet50", 4.0, "batch 256 fp16: fused B0 >= 4x faster than eager ResNet-50"),
    Target("fused_layer_fused_floor", 0.5, "B0 224 fp16 batch 256: fused reaches >= 50% of the layer-fused memory floor"),
    Target("cudagraph_vs_reduce_overhead", 1.2, 'B0 224 fp16 batch 1: fused CUDA graph >= 1.2x torch.compile(reference, "reduce-overhead")'),
    Target("depthwise_vs_copy", 0.7, "B0 224 fp16 batch 256, every depthwise shape of model.blocks[2] and [3]: "
                                     "the kernel's bytes/s >= 70% of a device-to-device copy's (the worst shape)"),
)
DEPTHWISE_STAGES = (2, 3)  # model.blocks indices of the depthwise target
DEPTHWISE_BATCH = 256


def depthwise_target_shapes() -> set[tuple[int, int, int, int, int]]:
    """(channels, height, width, kernel, stride) of each depthwise conv in B0's target stages at 224."""
    from ..builders import model_structure
    from ..shapes import block_shapes

    return {(s.mid_channels, s.height, s.width, s.kernel, s.stride)
            for s in block_shapes(model_structure("efficientnet_b0"), 224, 224) if s.stage in DEPTHWISE_STAGES}


def _depthwise_vs_copy(kernels: Iterable[dict]):
    """The worst floor fraction (kernel bytes/s over copy bytes/s) over the target's shapes; None
    unless every one of them was measured."""
    got = {tuple(k["shape"]): k.get("floor_fraction") for k in kernels
           if k.get("op") == "dwconv_bn_act" and k.get("impl", "triton") == "triton"
           and full_model_name(k["model"]) == "efficientnet_b0" and int(k["batch"]) == DEPTHWISE_BATCH
           and k["dtype"] == "fp16" and k.get("median_s")}
    fractions = [got.get(shape) for shape in depthwise_target_shapes()]
    return min(fractions) if fractions and all(f is not None for f in fractions) else None


def evaluate_targets(rows: Iterable[dict], kernels: Iterable[dict] = ()) -> list[dict]:
    """The project's speed targets from model result rows (keys: model, resolution, batch,
    dtype, provider, median_s, floor_fraction_layer_fused) and kernel benchmark rows (op, model,
    batch, dtype, shape, median_s, floor_fraction). A target whose cases were not measured in
    this run is reported as such, never as met."""
    table = {}
    for r in rows:
        if r.get("median_s"):
            table[(full_model_name(r["model"]), int(r["resolution"]), int(r["batch"]), r["dtype"], r["provider"])] = r

    def t(provider, batch, model="efficientnet_b0"):
        r = table.get((model, 224, batch, "fp16", provider))
        return r["median_s"] if r else None

    def ratio(slow, fast):
        return slow / fast if slow and fast else None

    fused256 = table.get(("efficientnet_b0", 224, 256, "fp16", "fused"))
    values = {
        "fused_vs_eager": (ratio(t("eager", 256), t("fused", 256)), "eager / fused", ("eager", "fused")),
        "fused_vs_max_autotune": (ratio(t("compile_max_autotune", 256), t("fused", 256)),
                                  "max-autotune / fused", ("compile_max_autotune", "fused")),
        "fused_b0_vs_eager_resnet50": (ratio(t("eager", 256, RESNET), t("fused", 256)),
                                       "ResNet-50 eager / B0 fused", ("resnet50 eager", "fused")),
        "fused_layer_fused_floor": (fused256.get("floor_fraction_layer_fused") if fused256 else None,
                                    "layer-fused floor time / fused time", ("fused",)),
        "cudagraph_vs_reduce_overhead": (ratio(t("compile_reduce_overhead", 1), t("cudagraph_fused", 1)),
                                         "reduce-overhead / CUDA-graph fused", ("compile_reduce_overhead", "cudagraph_fused")),
        "depthwise_vs_copy": (_depthwise_vs_copy(kernels), "worst depthwise bytes/s / copy bytes/s",
                              ("the depthwise kernel benchmarks at batch 256",)),
    }
    out = []
    for target in TARGETS:
        value, how, needs = values[target.name]
        out.append({
            "target": target.name, "description": target.description, "threshold": target.threshold,
            "value": value, "how": how,
            "met": None if value is None or (isinstance(value, float) and math.isnan(value)) else value >= target.threshold,
            "status": ("not measured (needs " + ", ".join(needs) + " at B0 224 fp16 on a GPU)") if value is None
            else ("MET" if value >= target.threshold else "NOT MET"),
        })
    return out


def format_targets(results: list[dict]) -> str:
    lines = ["| target | measured | threshold | status |", "|---|---:|---:|---|"]
    for r in results:
        v = "—" if r["value"] is None else f"{r['value']:.2f} ({r['how']})"
        lines.append(f"| {r['description']} | {v} | {r['threshold']:g} | {r['status']} |")
    return "\n".join(lines)
