"""Where the time of one forward goes, by op category, from ``torch.profiler``."""
from __future__ import annotations

import time

import torch

from .metrics import roof_for
from .providers import PROVIDERS, Runner
from .timing import sync


CATEGORIES: tuple[str, ...] = ("stem", "depthwise", "se", "1x1", "elementwise", "launches/other")
_KIND_TO_CATEGORY = {"stem": "stem", "1x1": "1x1", "head": "1x1", "classifier": "1x1",
                     "depthwise": "depthwise", "se": "se", "elementwise": "elementwise"}
_LABEL = "fmb::"


def _label_modules(net) -> list:
    """Hooks that wrap each module of interest in a ``record_function`` label."""
    from torch.profiler import record_function

    from ..layers import PaddedConv2d, SqueezeExcite

    labels = {}
    for name, m in net.named_modules():
        if isinstance(m, SqueezeExcite):
            labels[m] = "se"
        elif name == "conv_stem":
            labels[m] = "stem"
        elif isinstance(m, PaddedConv2d) and m.groups > 1:
            labels[m] = "depthwise"
        elif isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and ".se." not in name:
            labels[m] = "1x1"
        elif isinstance(m, torch.nn.Linear):
            labels[m] = "1x1"
        elif isinstance(m, torch.nn.BatchNorm2d):
            labels[m] = "elementwise"
    handles, stack = [], []

    def pre(module, args):
        rf = record_function(_LABEL + labels[module])
        rf.__enter__()
        stack.append(rf)

    def post(module, args, out):
        stack.pop().__exit__(None, None, None)

    for m in labels:
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    return handles


def _classify_unlabelled(name: str) -> str:
    n = name.lower()
    if "dwconv" in n:
        return "depthwise"
    if "squeeze_excite" in n:
        return "se"
    if "pointwise_gated" in n or n in ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"):
        return "1x1"
    if "conv" in n:
        return "stem"  # the only torch conv the fused path runs
    return "elementwise"


def profile_breakdown(runner: Runner, iters: int = 3) -> dict:
    """Where the time of one forward goes, by category, from ``torch.profiler``.

    GPU: each op's self device (kernel) time; CPU: each op's self CPU time. Reference-path ops
    are attributed through ``record_function`` labels on the modules (depthwise conv, SE, 1x1
    convs, BN); fused-path ops by their kernel op names. "launches/other" is the measured wall
    time of the profiled calls minus all attributed op time: launch gaps, Python and framework
    overhead (profiler overhead included, so it is an upper bound)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    device = runner.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    handles = _label_modules(runner.net) if PROVIDERS[runner.provider].backend == "reference" else []
    try:
        runner.call()
        sync(device)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(iters):
                runner.call()
            sync(device)
            wall = (time.perf_counter() - t0) / iters
    finally:
        for h in handles:
            h.remove()
    cuda = device.type == "cuda"
    totals = {c: 0.0 for c in CATEGORIES}
    for ev in prof.events():
        if cuda:
            # A kernel is listed twice: as its own device event and in the self device time of
            # the CPU op that launched it. Only the CPU ops are counted (they carry the labels).
            if ev.device_type != DeviceType.CPU:
                continue
            self_us = getattr(ev, "self_device_time_total", None)
            if self_us is None:
                self_us = getattr(ev, "self_cuda_time_total", 0.0)
        else:
            self_us = ev.self_cpu_time_total
        if not self_us or ev.name.startswith("ProfilerStep"):
            continue
        if ev.name.startswith(_LABEL):
            # on the GPU, kernels the labelled module launched outside any op; on the CPU, its
            # own time outside aten ops (overhead)
            totals[ev.name[len(_LABEL):] if cuda else "launches/other"] += self_us
            continue
        label, parent = None, ev.cpu_parent
        while parent is not None:
            if parent.name.startswith(_LABEL):
                label = parent.name[len(_LABEL):]
                break
            parent = parent.cpu_parent
        totals[label or _classify_unlabelled(ev.name)] += self_us
    seconds = {c: v / 1e6 / iters for c, v in totals.items()}
    attributed = sum(v for c, v in seconds.items() if c != "launches/other")
    seconds["launches/other"] = max(0.0, wall - attributed) if cuda else seconds["launches/other"] + max(
        0.0, wall - attributed - seconds["launches/other"])
    level = "layer_fused" if PROVIDERS[runner.provider].backend == "fused" else "eager"
    roof = roof_for(runner.model_name, runner.resolution, runner.batch, runner.dtype)
    kinds = roof.by_kind(level) if roof else {}
    cat_flops = {c: 0.0 for c in CATEGORIES}
    cat_bytes = {c: 0.0 for c in CATEGORIES}
    for kind, d in kinds.items():
        cat_flops[_KIND_TO_CATEGORY[kind]] += d["flops"]
        cat_bytes[_KIND_TO_CATEGORY[kind]] += d["bytes"]
    rows = []
    total = sum(seconds.values())
    for c in CATEGORIES:
        rows.append({
            "category": c, "ms": seconds[c] * 1e3, "share": seconds[c] / total if total else 0.0,
            "gflops": cat_flops[c] / 1e9, "mb": cat_bytes[c] / 1e6,
            "flop_per_byte": cat_flops[c] / cat_bytes[c] if cat_bytes[c] else None,
        })
    return {"provider": runner.provider, "model": runner.model_name, "resolution": runner.resolution,
            "batch": runner.batch, "dtype": runner.dtype, "wall_ms": wall * 1e3, "bytes_level": level,
            "time_source": "self device (kernel) time" if cuda else "self CPU time", "rows": rows}
