"""The providers the study and the benchmarks time, and how each is built, moved, warmed up
(compile, autotune, CUDA-graph capture) and called: :func:`make_runner`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .._environ import environment
from ..backend import use_backend
from ..builders import MODEL_BUILDERS, resolve_model_name
from ..config import VARIANTS
from .timing import sync


@dataclass(frozen=True)
class Provider:
    name: str
    title: str
    backend: str  # "fused" or "reference"
    compile_mode: str | None = None  # torch.compile mode, None = eager
    cuda_graph: bool = False  # captured with torch.cuda.CUDAGraph
    needs_cuda: bool = False
    batches: tuple[int, ...] = ()  # the only batch sizes it runs at (launch-overhead providers); () = any
    efficientnet_only: bool = False  # needs the fused path
    # environment set around every call: a variant of the fused path whose choice is under test
    env: tuple[tuple[str, str], ...] = ()


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("fused", "fastmbconv fused (Triton)", "fused", needs_cuda=True, efficientnet_only=True),
    Provider("eager", "reference eager (cuDNN on GPU)", "reference"),
    Provider("compile_max_autotune", 'torch.compile(reference, mode="max-autotune")', "reference",
             compile_mode="max-autotune", needs_cuda=True),
    Provider("compile_fused", "torch.compile(fused)", "fused", compile_mode="default", needs_cuda=True,
             efficientnet_only=True),
    # at batch 256 too: the fused forward's time with its launch overhead taken away
    Provider("cudagraph_fused", "fused, CUDA graph (torch.cuda.CUDAGraph)", "fused", cuda_graph=True,
             needs_cuda=True, batches=(1, 256), efficientnet_only=True),
    Provider("compile_reduce_overhead", 'torch.compile(reference, mode="reduce-overhead")', "reference",
             compile_mode="reduce-overhead", needs_cuda=True, batches=(1,)),
    # the fused path with one of its choices forced, timed beside it to decide that choice
    Provider("fused_separate", "fused, expand and depthwise as two launches", "fused", needs_cuda=True,
             efficientnet_only=True, env=(("FASTMBCONV_EXPAND_DW", "separate"),)),
    Provider("fused_torch_1x1", "fused, 1x1 convs on cuBLAS (not the head's pooled one or expands fused "
             "with their depthwise)", "fused", needs_cuda=True, efficientnet_only=True,
             env=(("FASTMBCONV_POINTWISE_IMPL", "torch"),)),
    Provider("fused_cudnn_dw", "fused, depthwise convs on cuDNN + one Triton BN/SiLU/SE-sum pass", "fused",
             needs_cuda=True, efficientnet_only=True,
             env=(("FASTMBCONV_EXPAND_DW", "separate"), ("FASTMBCONV_DEPTHWISE_IMPL", "torch"))),
)}
#: providers that only force a choice of the fused path: timed for B0 at the headline's batch 256
VARIANT_BATCH = 256

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
    """An EfficientNet's builder name (see :func:`fastmbconv.builders.resolve_model_name`), or
    ``"resnet50"`` for the FLOPs anchor."""
    if name in (RESNET, "rn50", "resnet"):
        return RESNET
    try:
        full = resolve_model_name(name)
    except ValueError:
        full = None
    if full not in MODEL_BUILDERS:  # the study times the B0-B7 builders (symmetric padding) and ResNet-50
        raise ValueError(f"unknown model {name!r}; expected one of {[short_name(m) for m in ALL_MODELS]}")
    return full


def native_resolution(model: str) -> int:
    model = full_model_name(model)
    if model == RESNET:
        return 224
    return VARIANTS[short_name(model)].resolution


def skip_reason(provider: str, model: str, batch: int, device, resolution: int | None = None) -> str | None:
    """Why this (provider, model, batch) cannot or should not run on ``device``; None if it can."""
    p = PROVIDERS[provider]
    device = torch.device(device)
    model = full_model_name(model)
    if p.efficientnet_only and model == RESNET:
        return f"{provider} is the fused EfficientNet path; ResNet-50 runs eager and compiled only"
    if p.batches and batch not in p.batches:
        return f"{provider} is a launch-overhead provider, run at batch {' and '.join(map(str, p.batches))} only"
    if p.env and (batch != VARIANT_BATCH or model != "efficientnet_b0"):
        return f"{provider} is a variant of the fused path, timed for B0 at batch {VARIANT_BATCH} only"
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
        from ..resnet import resnet50_anchor

        net, source = resnet50_anchor()
    else:
        net, source = MODEL_BUILDERS[model](), "fastmbconv"
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net.eval(), source


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
    x: torch.Tensor  # the input every call reads


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
        with torch.no_grad(), use_backend(p.backend), environment(p.env):
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
        call = captured(call, device)
    return Runner(provider, model, source, resolution, batch, dtype, device, call, net, x)


def captured(call: Callable, device: torch.device) -> Callable:
    """``call`` captured in a CUDA graph on ``device`` (after three warm-up calls on a side
    stream, as capture asks), as a call that replays it and returns the captured output."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # a capture stream of this GPU: torch.cuda.graph's default one belongs to the GPU that was
    # current when the process first captured
    with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
        static_out = call()

    def replay():
        graph.replay()
        return static_out

    for _ in range(3):
        replay()
    sync(device)
    return replay
