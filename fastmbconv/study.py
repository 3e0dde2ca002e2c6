"""``python -m fastmbconv.study``: latency vs FLOPs vs memory traffic, on the device present.

Runs EfficientNet B0-B7 and ResNet-50 (the FLOPs anchor) under each provider, and writes to
``--out`` (default ``study_out/``):

* ``results.md``   the table (median latency, spread, img/s, TFLOP/s, GB/s, fraction of the
  measured memory floor at each fusion level), the speed targets, the B0 time breakdown and
  the analytic roofline;
* ``results.json`` / ``results.csv``  the same numbers, machine-readable;
* ``latency_vs_flops.png``, ``throughput_vs_batch.png``, ``b0_breakdown.png``;
* ``b0_layers.csv``  every op of B0 with its FLOPs, bytes and FLOP/byte at each fusion level.

Providers (:data:`PROVIDERS`): the fused Triton path; the reference modules in eager mode
(cuDNN on a GPU); ``torch.compile(reference, mode="max-autotune")``; ``torch.compile`` of the
fused path; at batch 1 the fused model captured in a CUDA graph and the reference compiled with
``mode="reduce-overhead"``. On a machine without a GPU only the eager reference runs, on a small
plan (every model at a tiny resolution), so the command finishes in seconds.

Timing: every call is synchronised (CUDA events on a GPU, ``perf_counter`` on the CPU), compile
and autotuning happen in warm-up calls that are not timed, and the median and interquartile
range of the timed calls are reported.

This module is also the provider library of ``benchmarks/`` (:func:`make_runner`,
:func:`skip_reason`, :func:`evaluate_targets`).
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from . import roofline as rl
from .backend import use_backend
from .model import MODEL_BUILDERS

# ---------------------------------------------------------------------- providers
@dataclass(frozen=True)
class Provider:
    name: str
    title: str
    backend: str  # "fused" or "reference"
    compile_mode: str | None = None  # torch.compile mode, None = eager
    cuda_graph: bool = False  # captured with torch.cuda.CUDAGraph
    needs_cuda: bool = False
    batch1_only: bool = False
    efficientnet_only: bool = False  # needs the fused path


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("fused", "fastmbconv fused (Triton)", "fused", needs_cuda=True, efficientnet_only=True),
    Provider("eager", "reference eager (cuDNN on GPU)", "reference"),
    Provider("compile_max_autotune", 'torch.compile(reference, mode="max-autotune")', "reference",
             compile_mode="max-autotune", needs_cuda=True),
    Provider("compile_fused", "torch.compile(fused)", "fused", compile_mode="default", needs_cuda=True,
             efficientnet_only=True),
    Provider("cudagraph_fused", "fused, CUDA graph (torch.cuda.CUDAGraph)", "fused", cuda_graph=True,
             needs_cuda=True, batch1_only=True, efficientnet_only=True),
    Provider("compile_reduce_overhead", 'torch.compile(reference, mode="reduce-overhead")', "reference",
             compile_mode="reduce-overhead", needs_cuda=True, batch1_only=True),
)}

EFFICIENTNETS: tuple[str, ...] = tuple(MODEL_BUILDERS)
RESNET = "resnet50"
ALL_MODELS: tuple[str, ...] = EFFICIENTNETS + (RESNET,)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

#: Cases larger than this many input pixels per call (batch x H x W) are skipped unless
#: FASTMBCONV_BENCH_HUGE=1: B6/B7 at batch 256 take seconds per call and, under max-autotune,
#: many minutes of autotuning. B5 at 456 px batch 256 (53 M pixels) is the largest kept.
HUGE_PIXELS = 256 * 456 * 456
HUGE_ENV = "FASTMBCONV_BENCH_HUGE"


def short_name(model: str) -> str:
    return model.replace("efficientnet_", "")


def full_model_name(name: str) -> str:
    if name in ALL_MODELS:
        return name
    if f"efficientnet_{name}" in MODEL_BUILDERS:
        return f"efficientnet_{name}"
    if name in ("rn50", "resnet"):
        return RESNET
    raise ValueError(f"unknown model {name!r}; expected one of {[short_name(m) for m in ALL_MODELS]}")


def native_resolution(model: str) -> int:
    model = full_model_name(model)
    if model == RESNET:
        return 224
    from .config import VARIANTS

    return VARIANTS[short_name(model)].resolution


def skip_reason(provider: str, model: str, batch: int, device, resolution: int | None = None) -> str | None:
    """Why this (provider, model, batch) cannot or should not run on ``device``; None if it can."""
    p = PROVIDERS[provider]
    device = torch.device(device)
    model = full_model_name(model)
    if p.efficientnet_only and model == RESNET:
        return f"{provider} is the fused EfficientNet path; ResNet-50 runs eager and compiled only"
    if p.batch1_only and batch != 1:
        return f"{provider} is a batch-1 (launch-overhead) provider"
    res = resolution or native_resolution(model)
    if batch * res * res > HUGE_PIXELS and os.environ.get(HUGE_ENV) != "1":
        return (f"{short_name(model)} at {res} px batch {batch} is capped (over {HUGE_PIXELS:,} input pixels per "
                f"call: seconds per call, minutes of autotuning); set {HUGE_ENV}=1 to run it")
    if p.needs_cuda and device.type != "cuda":
        why = {"fused": "the fused Triton kernels need a CUDA GPU (the CPU interpreter is for tests, not timing)",
               "cudagraph_fused": "CUDA graphs need a CUDA GPU"}.get(provider)
        return why or f"{provider} is a GPU provider (torch.compile on the CPU would only time the C++ backend, slowly)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


def build_model(model: str) -> tuple[torch.nn.Module, str]:
    """(model on the CPU in fp32, source). Random weights; BN running stats randomised a little
    so nothing runs on trivially constant data."""
    model = full_model_name(model)
    if model == RESNET:
        from .resnet import resnet50_anchor

        net, source = resnet50_anchor()
    else:
        net, source = MODEL_BUILDERS[model](), "fastmbconv"
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net.eval(), source


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One ready-to-time forward pass: ``call()`` runs it once (asynchronously on a GPU)."""

    provider: str
    model_name: str
    model_source: str
    resolution: int
    batch: int
    dtype: str
    device: torch.device
    call: Callable[[], object]
    net: torch.nn.Module

    def timed_call(self):
        """One forward, synchronised: what the benchmarks time."""
        out = self.call()
        sync(self.device)
        return out


def _prepare_dynamo() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


def make_runner(provider: str, model: str, batch: int, dtype: str = "fp16", device="cuda",
                resolution: int | None = None, warmup: int = 3, net: torch.nn.Module | None = None,
                source: str = "fastmbconv") -> Runner:
    """Build, move and warm up (compile, autotune, capture) one provider; raises if it cannot run.
    ``net``: a model from :func:`build_model` to use (it is moved in place) instead of a new one."""
    device = torch.device(device)
    model = full_model_name(model)
    resolution = resolution or native_resolution(model)
    reason = skip_reason(provider, model, batch, device, resolution)
    if reason:
        raise RuntimeError(f"cannot run {provider} for {model} batch {batch}: {reason}")
    p = PROVIDERS[provider]
    if net is None:
        net, source = build_model(model)
    net = net.to(device=device, dtype=DTYPES[dtype]).to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen, device=device, dtype=DTYPES[dtype])
    x = x.contiguous(memory_format=torch.channels_last)

    def forward(module):
        with torch.no_grad(), use_backend(p.backend):
            return module(x)

    fn = net
    if p.compile_mode is not None:
        _prepare_dynamo()
        fn = torch.compile(net, mode=None if p.compile_mode == "default" else p.compile_mode)

    if p.compile_mode == "reduce-overhead":
        def call():
            torch.compiler.cudagraph_mark_step_begin()
            return forward(fn)
    else:
        def call():
            return forward(fn)

    for _ in range(max(warmup, 3 if p.compile_mode else 1)):
        call()
    sync(device)

    if p.cuda_graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                call()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = call()

        def call():  # noqa: F811 - replay the captured forward
            graph.replay()
            return static_out

        for _ in range(3):
            call()
        sync(device)
    return Runner(provider, model, source, resolution, batch, dtype, device, call, net)


# ---------------------------------------------------------------------- timing
@dataclass
class Timing:
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    reps: int

    @property
    def iqr_s(self) -> float:
        return self.q3_s - self.q1_s


def time_runner(runner: Runner, reps: int = 20, min_seconds: float = 0.0, max_seconds: float = 5.0) -> Timing:
    """Median of ``reps`` synchronised calls (more if ``min_seconds`` is not yet reached, fewer
    if ``max_seconds`` is). CUDA events on a GPU, ``perf_counter`` on the CPU."""
    times: list[float] = []
    device = runner.device
    begin = time.perf_counter()
    while True:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner.call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            runner.call()
            times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - begin
        if len(times) >= 3 and spent > max_seconds:
            break
        if len(times) >= reps and spent >= min_seconds:
            break
    return summarize(times)


def summarize(times: Sequence[float]) -> Timing:
    ts = sorted(times)
    if len(ts) >= 2:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    else:
        q1 = q3 = ts[0]
    return Timing(statistics.median(ts), q1, q3, ts[0], len(ts))


# ---------------------------------------------------------------------- metrics
_ROOF_CACHE: dict = {}


def roof_for(model: str, resolution: int, batch: int, dtype: str):
    """The analytic roofline (None for ResNet-50, whose fusion levels are not modelled)."""
    model = full_model_name(model)
    if model == RESNET:
        return None
    key = (model, resolution, batch, dtype)
    if key not in _ROOF_CACHE:
        _ROOF_CACHE[key] = rl.roofline(model, resolution, batch, dtype)
    return _ROOF_CACHE[key]


_FLOP_CACHE: dict = {}


def flops_for(model: str, resolution: int, batch: int) -> int:
    """FLOPs of one call, counted by ``fastmbconv.count_flops`` on the reference model."""
    from .flops import count_flops

    model = full_model_name(model)
    key = (model, resolution)
    if key not in _FLOP_CACHE:
        with torch.device("meta"):
            if model == RESNET:
                from .resnet import resnet50

                net = resnet50()
            else:
                net = MODEL_BUILDERS[model]()
        _FLOP_CACHE[key] = count_flops(net, resolution, batch=1)
    return _FLOP_CACHE[key] * batch


def metrics(model: str, resolution: int, batch: int, dtype: str, seconds: float,
            bandwidth: rl.Bandwidth | None) -> dict:
    """FLOPs, bytes per fusion level, TFLOP/s, GB/s and fraction of each memory floor."""
    flops = flops_for(model, resolution, batch)
    d = {"flops": flops, "gflops_per_image": flops / batch / 1e9,
         "tflops": flops / seconds / 1e12 if seconds > 0 else math.nan,
         "images_per_s": batch / seconds if seconds > 0 else math.nan}
    roof = roof_for(model, resolution, batch, dtype)
    for level in rl.LEVELS:
        nb = roof.bytes(level) if roof else None
        d[f"bytes_{level}"] = nb
        d[f"mb_per_image_{level}"] = nb / batch / 1e6 if nb else None
        d[f"gb_s_{level}"] = nb / seconds / 1e9 if nb and seconds > 0 else None
        d[f"floor_fraction_{level}"] = (
            rl.floor_fraction(seconds, nb, bandwidth) if nb and bandwidth is not None else None)
    if bandwidth is not None:
        d["bandwidth_gb_s"] = bandwidth.gb_s
        d["bandwidth_kind"] = bandwidth.kind
    return d


# ---------------------------------------------------------------------- targets
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
)


def evaluate_targets(rows: Iterable[dict]) -> list[dict]:
    """The project's speed targets from result rows (keys: model, resolution, batch, dtype,
    provider, median_s, floor_fraction_layer_fused). A target whose cases were not measured in
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


# ---------------------------------------------------------------------- profiler breakdown
CATEGORIES: tuple[str, ...] = ("stem", "depthwise", "se", "1x1", "elementwise", "launches/other")
_KIND_TO_CATEGORY = {"stem": "stem", "1x1": "1x1", "head": "1x1", "classifier": "1x1",
                     "depthwise": "depthwise", "se": "se", "elementwise": "elementwise"}
_LABEL = "fmb::"


def _label_modules(net) -> list:
    """Hooks that wrap each module of interest in a ``record_function`` label."""
    from torch.profiler import record_function

    from .layers import PaddedConv2d, SqueezeExcite

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
            self_us = getattr(ev, "self_device_time_total", None)
            if self_us is None:
                self_us = getattr(ev, "self_cuda_time_total", 0.0)
        else:
            self_us = ev.self_cpu_time_total
        if not self_us or ev.name.startswith("ProfilerStep"):
            continue
        if ev.name.startswith(_LABEL):
            if not cuda:  # CPU time spent in the module itself, outside aten ops: overhead
                totals["launches/other"] += self_us
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


# ---------------------------------------------------------------------- the plan
@dataclass
class Plan:
    description: str
    device: torch.device
    cases: list[tuple[str, int, int, str, str]]  # (model, resolution, batch, dtype, provider)
    skipped: list[tuple[tuple, str]]
    profile: list[tuple[str, int, int, str, str]]
    reps: int
    max_seconds: float
    cpu_threads: int | None = None


def make_plan(device, quick: bool = False, full: bool = False, models: Sequence[str] | None = None,
              batches: Sequence[int] | None = None, dtypes: Sequence[str] | None = None,
              providers: Sequence[str] | None = None, resolution: int | None = None) -> Plan:
    device = torch.device(device)
    cuda = device.type == "cuda"
    if not cuda:
        res = resolution or (48 if quick else 64)
        models = models or ALL_MODELS
        batches = batches or (1, 4)
        dtypes = dtypes or ("fp32",)
        providers = providers or ("eager",)
        desc = (f"CPU small version: every model at {res}x{res} px (not the native resolutions), batch "
                f"{', '.join(map(str, batches))}, {', '.join(dtypes)}, channels_last, reference eager only, "
                "1 CPU thread (stable on a shared machine); GPU providers "
                "(fused, compiled, CUDA graphs) need a CUDA GPU. Times are host CPU times; the 'memory floor' "
                "uses measured host memcpy bandwidth.")
        reps, max_s = (3, 0.5) if quick else (7, 2.0)
    elif quick:
        models = models or EFFICIENTNETS[:4] + (RESNET,)
        batches = batches or (1, 32)
        dtypes = dtypes or ("fp16",)
        providers = providers or ("fused", "eager", "cudagraph_fused")
        res = resolution
        desc = f"GPU quick: {', '.join(short_name(m) for m in models)} at native resolution, batch {batches}, {dtypes}, providers {providers}"
        reps, max_s = 20, 2.0
    else:
        models = models or ALL_MODELS
        batches = batches or (1, 32, 256)
        dtypes = dtypes or (("fp16", "bf16", "fp32") if full else ("fp16",))
        providers = providers or tuple(PROVIDERS)
        res = resolution
        desc = (f"GPU {'full' if full else 'default'}: {', '.join(short_name(m) for m in models)} at native resolution"
                f"{'' if res is None else f' (overridden: {res})'}, batch {tuple(batches)}, {tuple(dtypes)}, channels_last, eval; providers {tuple(providers)}"
                + ("" if full else "; torch.compile max-autotune only for B0 and ResNet-50 (autotuning every model takes hours; --full runs it everywhere)"))
        reps, max_s = 30, 5.0
    models = [full_model_name(m) for m in models]
    for p in providers:
        if p not in PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; expected one of {list(PROVIDERS)}")
    cases, skipped = [], []
    for model in models:
        r = res or native_resolution(model)
        for dtype in dtypes:
            for batch in batches:
                for p in providers:
                    if cuda and not full and p == "compile_max_autotune" and model not in ("efficientnet_b0", RESNET):
                        continue
                    why = skip_reason(p, model, batch, device, r)
                    (skipped.append(((model, r, batch, dtype, p), why)) if why
                     else cases.append((model, r, batch, dtype, p)))
    b0 = "efficientnet_b0"
    prof = []
    if b0 in models:
        r = res or native_resolution(b0)
        pb = max(b for b in batches) if not cuda else (256 if 256 in batches else max(batches))
        for p in ("eager", "fused"):
            if p in providers and skip_reason(p, b0, pb, device, r) is None:
                prof.append((b0, r, pb, dtypes[0], p))
    return Plan(desc, device, cases, skipped, prof, reps, max_s, cpu_threads=None if cuda else 1)


# ---------------------------------------------------------------------- run + write
def run_plan(plan: Plan, progress: bool = True, log=print) -> dict:
    threads = torch.get_num_threads()
    if plan.device.type == "cpu" and plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    try:
        return _run_plan(plan, progress, log)
    finally:
        torch.set_num_threads(threads)


def _run_plan(plan: Plan, progress: bool, log) -> dict:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an optional extra
        tqdm = None
    bw = rl.measure_copy_bandwidth(plan.device)
    log(f"measured {bw.kind}: {bw.gb_s:.1f} GB/s on {bw.device}")
    rows = []
    cache: dict = {}  # one built model at a time, reused across batches/dtypes/providers

    def model_for(name):
        if name not in cache:
            cache.clear()
            cache[name] = build_model(name)
        net, source = cache[name]
        return (copy.deepcopy(net) if plan.device.type == "cuda" else net), source
    items = plan.cases
    bar = tqdm(items, desc="study", unit="case", disable=not progress, file=sys.stderr) if tqdm else items
    for case in bar:
        model, res, batch, dtype, provider = case
        if tqdm:
            bar.set_postfix_str(f"{short_name(model)} {res}px bs{batch} {dtype} {provider}")
        row = {"model": model, "resolution": res, "batch": batch, "dtype": dtype, "provider": provider}
        try:
            net, source = model_for(model)
            runner = make_runner(provider, model, batch, dtype, plan.device, res, net=net, source=source)
            timing = time_runner(runner, reps=plan.reps, max_seconds=plan.max_seconds)
            row.update(model_source=runner.model_source, median_s=timing.median_s, q1_s=timing.q1_s,
                       q3_s=timing.q3_s, iqr_s=timing.iqr_s, min_s=timing.min_s, reps=timing.reps)
            row.update(metrics(model, res, batch, dtype, timing.median_s, bw))
            del runner
        except Exception as exc:  # one failing provider must not end the study
            row.update(error=f"{type(exc).__name__}: {exc}"[:300], median_s=None)
        rows.append(row)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    breakdowns = []
    for model, res, batch, dtype, provider in plan.profile:
        try:
            net, source = model_for(model)
            runner = make_runner(provider, model, batch, dtype, plan.device, res, net=net, source=source)
            breakdowns.append(profile_breakdown(runner))
        except Exception as exc:
            breakdowns.append({"provider": provider, "model": model, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return {
        "meta": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": rl.device_name(plan.device), "device_type": plan.device.type,
            "torch": torch.__version__, "plan": plan.description, "bandwidth": bw.as_dict(),
            "skipped": [{"case": list(c), "reason": why} for c, why in plan.skipped],
        },
        "rows": rows,
        "targets": evaluate_targets(rows),
        "breakdown": breakdowns,
    }


CSV_FIELDS = ("model", "resolution", "batch", "dtype", "provider", "median_s", "q1_s", "q3_s", "iqr_s", "min_s",
              "reps", "images_per_s", "gflops_per_image", "tflops", "mb_per_image_eager",
              "mb_per_image_layer_fused", "mb_per_image_whole_block", "gb_s_eager", "gb_s_layer_fused",
              "floor_fraction_eager", "floor_fraction_layer_fused", "floor_fraction_whole_block",
              "model_source", "error")


def _fmt(v, spec=".2f", none="—"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def format_markdown(result: dict) -> str:
    meta = result["meta"]
    bw = meta["bandwidth"]
    out = [
        "# fastmbconv study", "",
        f"- device: **{meta['device']}**; torch {meta['torch']}; {meta['created']}",
        f"- plan: {meta['plan']}",
        f"- memory ceiling measured in this run: {bw['gb_s']:.1f} GB/s, {bw['kind']} ({bw['method']})",
        "- latency: median of synchronised calls after untimed warm-up (compile/autotune excluded); "
        "spread = interquartile range. Floor fraction = (analytic bytes at that fusion level / measured "
        "bandwidth) / measured time; 1.0 means at the floor.", "",
        "| model | res | batch | dtype | provider | median ms | IQR ms | img/s | GFLOP/img | TFLOP/s | "
        "GB/s (eager bytes) | GB/s (layer-fused bytes) | floor frac eager | floor frac layer-fused | floor frac whole-block |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("median_s") is None:
            out.append(f"| {short_name(r['model'])} | {r['resolution']} | {r['batch']} | {r['dtype']} | "
                       f"{r['provider']} | failed: {r.get('error', '?')} |||||||||| |")
            continue
        out.append(
            f"| {short_name(r['model'])} | {r['resolution']} | {r['batch']} | {r['dtype']} | {r['provider']} | "
            f"{r['median_s'] * 1e3:.3f} | {r['iqr_s'] * 1e3:.3f} | {r['images_per_s']:,.1f} | "
            f"{r['gflops_per_image']:.3f} | {_fmt(r['tflops'], '.3f')} | {_fmt(r.get('gb_s_eager'), '.1f')} | "
            f"{_fmt(r.get('gb_s_layer_fused'), '.1f')} | {_fmt(r.get('floor_fraction_eager'), '.3f')} | "
            f"{_fmt(r.get('floor_fraction_layer_fused'), '.3f')} | {_fmt(r.get('floor_fraction_whole_block'), '.3f')} |")
    if meta["skipped"]:
        reasons: dict[str, int] = {}
        for s in meta["skipped"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        out += ["", "Skipped cases:"] + [f"- {n} x {why}" for why, n in reasons.items()]
    out += ["", "## Targets (H100, fp16, B0 at 224, batch 256 unless stated)", "", format_targets(result["targets"])]
    for b in result["breakdown"]:
        out += ["", f"## Where the time goes: {short_name(b['model'])} {b.get('resolution', '')} px, "
                    f"batch {b.get('batch', '')}, {b.get('dtype', '')}, {b['provider']}", ""]
        if "error" in b:
            out.append(f"failed: {b['error']}")
            continue
        out += [f"Wall {b['wall_ms']:.3f} ms per call under the profiler; op times are {b['time_source']}; "
                f"FLOPs and bytes are the analytic {b['bytes_level']} counts.", "",
                "| category | ms | share | GFLOP | MB | FLOP/byte |", "|---|---:|---:|---:|---:|---:|"]
        for row in b["rows"]:
            out.append(f"| {row['category']} | {row['ms']:.3f} | {row['share'] * 100:.1f}% | {row['gflops']:.3f} | "
                       f"{row['mb']:.2f} | {_fmt(row['flop_per_byte'], '.2f')} |")
    roofs = result.get("roofline_table")
    if roofs:
        out += ["", "## Analytic HBM traffic per image (batch and dtype of the first cases)", "", roofs]
    return "\n".join(out) + "\n"


def write_outputs(result: dict, out_dir: Path, plot: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    written.append(out_dir / "results.json")
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow(r)
    written.append(out_dir / "results.csv")
    (out_dir / "results.md").write_text(format_markdown(result))
    written.append(out_dir / "results.md")
    written.append(_write_layers_csv(result, out_dir / "b0_layers.csv"))
    if plot:
        written += _plots(result, out_dir)
    return written


def _write_layers_csv(result: dict, path: Path) -> Path:
    rows = [r for r in result["rows"] if r["model"] == "efficientnet_b0"]
    res = rows[0]["resolution"] if rows else 224
    batch = rows[0]["batch"] if rows else 1
    dtype = rows[0]["dtype"] if rows else "fp16"
    roof = rl.roofline("efficientnet_b0", res, batch, dtype)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["level", "layer", "kind", "mflops", "kb_read", "kb_written", "flop_per_byte"])
        for level in rl.LEVELS:
            for op in roof.ops[level]:
                w.writerow([level, op.layer, op.kind, f"{op.flops / 1e6:.3f}", f"{op.read / 1e3:.1f}",
                            f"{op.written / 1e3:.1f}", f"{op.intensity:.3f}"])
    return path


def _plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, LogLocator, FormatStrFormatter

    rows = [r for r in result["rows"] if r.get("median_s")]
    dev = result["meta"]["device"]
    paths = []

    # latency vs FLOPs, one panel per (batch, dtype), one line per provider
    panels = sorted({(r["batch"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.5), squeeze=False)
    for ax, (batch, dtype) in zip(axes[0], panels):
        for prov in PROVIDERS:
            pr = sorted((r for r in rows if r["batch"] == batch and r["dtype"] == dtype and r["provider"] == prov),
                        key=lambda r: r["gflops_per_image"])
            eff = [r for r in pr if r["model"] != RESNET]
            rn = [r for r in pr if r["model"] == RESNET]
            if not pr:
                continue
            line = None
            if eff:
                (line,) = ax.plot([r["gflops_per_image"] for r in eff], [r["median_s"] * 1e3 for r in eff],
                                  "o-", label=prov)
                for r in eff:
                    ax.annotate(short_name(r["model"]), (r["gflops_per_image"], r["median_s"] * 1e3),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
            for r in rn:
                ax.plot(r["gflops_per_image"], r["median_s"] * 1e3, "s", markersize=8,
                        color=line.get_color() if line else None, label=f"ResNet-50 {prov}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            # 1-2-5 major ticks with plain labels: a sweep often spans less than one decade.
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("GFLOP per image")
        ax.set_ylabel(f"latency per call (ms), batch {batch}")
        ax.set_title(f"batch {batch}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Latency vs FLOPs: EfficientNet B0-B7 and ResNet-50 ({dev})", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "latency_vs_flops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # throughput vs batch
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["model"], r["provider"], r["dtype"]) for r in rows}):
        pr = sorted((r for r in rows if (r["model"], r["provider"], r["dtype"]) == key), key=lambda r: r["batch"])
        if len(pr) < 2 and len({r["batch"] for r in rows}) > 1:
            continue
        ax.plot([r["batch"] for r in pr], [r["images_per_s"] for r in pr], "o-", label=f"{short_name(key[0])} {key[1]} {key[2]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput vs batch ({dev})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "throughput_vs_batch.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # B0 breakdown: one stacked bar per profiled provider
    good = [b for b in result["breakdown"] if "rows" in b]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 1.0 * max(1, len(good))))
    for i, b in enumerate(good):
        left = 0.0
        for row in b["rows"]:
            ax.barh(i, row["ms"], left=left, label=row["category"] if i == 0 else None,
                    color=f"C{CATEGORIES.index(row['category'])}")
            if row["share"] > 0.06:
                fpb = "" if row["flop_per_byte"] is None else f"\n{row['flop_per_byte']:.1f} F/B"
                ax.text(left + row["ms"] / 2, i, f"{row['category']}{fpb}", ha="center", va="center", fontsize=7)
            left += row["ms"]
    ax.set_yticks(range(len(good)), [f"{b['provider']}\nbs{b['batch']} {b['dtype']}" for b in good])
    ax.set_xlabel("ms per forward (profiler)")
    ax.set_title(f"EfficientNet-B0: where the time goes, FLOP/byte per category ({dev})", fontsize=10)
    if good:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "b0_breakdown.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _roofline_table(plan: Plan) -> str:
    if not plan.cases:
        return ""
    _, _, batch, dtype, _ = plan.cases[0]
    models = sorted({(c[0], c[1]) for c in plan.cases if c[0] != RESNET}, key=lambda mr: (ALL_MODELS.index(mr[0]), mr[1]))
    return rl.format_table([rl.roofline(m, r, batch, dtype) for m, r in models])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastmbconv.study",
        description="EfficientNet B0-B7 and ResNet-50: latency vs FLOPs vs memory floor, per provider")
    p.add_argument("--out", default="study_out", help="output directory (default: study_out/)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present)")
    p.add_argument("--quick", action="store_true", help="a smaller sweep (CPU: seconds; GPU: a few minutes)")
    p.add_argument("--full", action="store_true", help="GPU: every model, batch, dtype and provider")
    p.add_argument("--models", default=None, help="comma list, e.g. b0,b4,resnet50")
    p.add_argument("--batches", default=None, help="comma list, e.g. 1,32,256")
    p.add_argument("--dtypes", default=None, help="comma list of fp16,bf16,fp32")
    p.add_argument("--providers", default=None, help=f"comma list of {','.join(PROVIDERS)}")
    p.add_argument("--resolution", type=int, default=None, help="override every model's resolution")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None  # noqa: E731
    plan = make_plan(device, quick=a.quick, full=a.full, models=split(a.models),
                     batches=[int(b) for b in split(a.batches)] if a.batches else None,
                     dtypes=split(a.dtypes), providers=split(a.providers), resolution=a.resolution)
    print(f"fastmbconv study on {rl.device_name(device)}\n{plan.description}\n"
          f"{len(plan.cases)} cases, {len(plan.skipped)} skipped; writing to {a.out}/")
    t0 = time.perf_counter()
    result = run_plan(plan, progress=not a.no_progress)
    result["roofline_table"] = _roofline_table(plan)
    paths = write_outputs(result, Path(a.out), plot=not a.no_plots)
    print("\n" + format_targets(result["targets"]))
    failed = [r for r in result["rows"] if r.get("median_s") is None]
    if failed:
        print(f"\n{len(failed)} case(s) failed; see results.md")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    return result


if __name__ == "__main__":
    main()
