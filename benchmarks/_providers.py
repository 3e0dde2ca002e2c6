"""Shared pieces of the benchmarks: case lists, the synchronised timing loop, extra_info.

The providers themselves live in :mod:`fastmbconv.study` (``make_runner``), so the study
command and ``pytest benchmarks/`` time exactly the same calls.

Selection:
* default on a GPU: the headline cases (B0 at 224 fp16 batch 256 and 1 under every provider,
  ResNet-50 eager and compiled at the same batches, B0-B7 at batch 32 fp16 fused vs eager);
* ``FASTMBCONV_BENCH_FULL=1``: B0-B7 and ResNet-50 x batch 1/32/256 x fp16/bf16/fp32 x every
  provider (cases over ``fastmbconv.study.HUGE_PIXELS`` input pixels stay capped unless
  ``FASTMBCONV_BENCH_HUGE=1``);
* without a GPU: a CPU smoke case (B0 at 64 px, batch 2, fp32, eager); GPU cases are skipped
  with the reason. Narrow further with ``-k``, e.g. ``-k "b0 and bs256"``.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from fastmbconv import study
from fastmbconv.builders import model_structure
from fastmbconv.shapes import block_shapes
from fastmbconv.study.targets import DEPTHWISE_BATCH

FULL = os.environ.get("FASTMBCONV_BENCH_FULL") == "1"
HAS_CUDA = torch.cuda.is_available()
GPU_BUDGET_S = 1.5  # timed seconds per GPU case (after warm-up)
CPU_BUDGET_S = 0.5


def case_id(model, res, batch, dtype, provider, device) -> str:
    return f"{'gpu' if device == 'cuda' else 'cpu'}-{study.short_name(model)}-{res}-bs{batch}-{dtype}-{provider}"


def model_cases() -> list:
    """(model, resolution, batch, dtype, provider, device) params for bench_models.py."""
    cases = []
    b0, rn = "efficientnet_b0", study.RESNET
    gpu_providers = tuple(study.PROVIDERS)
    for batch in (256, 1):
        for p in gpu_providers:
            cases.append((b0, 224, batch, "fp16", p, "cuda"))
        for p in ("eager", "compile_max_autotune"):
            cases.append((rn, 224, batch, "fp16", p, "cuda"))
    for model in study.EFFICIENTNETS:
        for p in ("fused", "eager"):
            cases.append((model, study.native_resolution(model), 32, "fp16", p, "cuda"))
    if FULL:
        for model in study.ALL_MODELS:
            for batch in (1, 32, 256):
                for dtype in ("fp16", "bf16", "fp32"):
                    for p in gpu_providers:
                        cases.append((model, study.native_resolution(model), batch, dtype, p, "cuda"))
    cases.append((b0, 64, 2, "fp32", "eager", "cpu"))
    seen, params = set(), []
    for c in cases:
        if c in seen:
            continue
        seen.add(c)
        model, res, batch, dtype, provider, device = c
        reason = study.skip_reason(provider, model, batch, device, res)
        if reason and PROVIDER_INAPPLICABLE(reason):
            continue  # e.g. batch-1-only providers in the full sweep: not a case at all
        if device == "cuda" and not HAS_CUDA:
            reason = f"GPU case ({provider}): no CUDA GPU on this machine"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(c, id=case_id(*c), marks=marks))
    return params


def PROVIDER_INAPPLICABLE(reason: str) -> bool:  # noqa: N802 - a predicate on skip reasons
    return any(why in reason for why in ("a launch-overhead provider", "ResNet-50 runs eager and compiled only",
                                         "a variant of the fused path"))


def kernel_cases():
    """(op, model, batch, dtype, shape, extra) for bench_kernels.py, from the model structure."""
    models = ("efficientnet_b0", "efficientnet_b4")
    # the depthwise target's cases first: a step cut at its cap keeps them
    batches = (1, 32, 256) if FULL else (DEPTHWISE_BATCH, 32)
    dtypes = ("fp16", "bf16") if FULL else ("fp16",)
    params = []
    for model in models:
        structure = model_structure(model)
        res = structure.default_resolution
        shapes = block_shapes(structure, res, res)
        for batch in batches:
            for dtype in dtypes:
                seen = set()
                for s in shapes:
                    items = [("dwconv_bn_act", (s.mid_channels, s.height, s.width, s.kernel, s.stride, s.has_expand)),
                             ("squeeze_excite", (s.mid_channels, s.se_channels, s.out_height * s.out_width)),
                             ("pointwise_project", (s.mid_channels, s.out_channels, s.out_height, s.out_width, s.has_skip))]
                    if s.has_expand:
                        items.append(("pointwise_expand", (s.in_channels, s.mid_channels, s.height, s.width, False)))
                    for op, shape in items:
                        if batch == DEPTHWISE_BATCH and not FULL and (op, model) != ("dwconv_bn_act", "efficientnet_b0"):
                            continue  # the default set's batch 256: B0's depthwise cases alone
                        # pointwise: the Triton kernel vs cuBLAS; depthwise: vs cuDNN + affine_act_pool
                        both = op.startswith("pointwise") or op == "dwconv_bn_act"
                        impls = ("triton", "torch") if both else ("triton",)
                        for impl in impls:
                            key = (op, shape, impl)
                            if key in seen:
                                continue
                            seen.add(key)
                            pid = (f"{study.short_name(model)}-bs{batch}-{dtype}-{op}-"
                                   + "x".join(str(int(v)) for v in shape) + f"-{impl}")
                            marks = [] if HAS_CUDA else [pytest.mark.skip(
                                reason="kernel benchmark: the Triton kernels need a CUDA GPU")]
                            params.append(pytest.param((op, model, batch, dtype, shape, impl), id=pid, marks=marks))
    return params


# ---------------------------------------------------------------------- timing
def rounds_for(call, device, budget: float | None = None, lo: int = 5, hi: int = 50) -> int:
    """Rounds so that the timed part takes about ``budget`` seconds (one trial call first)."""
    budget = budget if budget is not None else (GPU_BUDGET_S if torch.device(device).type == "cuda" else CPU_BUDGET_S)
    t0 = time.perf_counter()
    call()
    study.sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    return int(min(hi, max(lo, budget / one)))


def pedantic(benchmark, call, device, rounds: int, iterations: int = 1, warmup_rounds: int = 3):
    """Time ``call`` with ``benchmark.pedantic``; the device is synchronised inside the timed
    region at the end of every round (after the last of ``iterations`` back-to-back calls), so
    per-iteration stats are true device times."""
    device = torch.device(device)
    counter = [0]

    def target():
        out = call()
        counter[0] += 1
        if counter[0] % iterations == 0:
            study.sync(device)
        return out

    study.sync(device)
    out = benchmark.pedantic(target, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds)
    study.sync(device)  # the untimed result call pytest-benchmark makes after looped rounds
    return out


def median_seconds(benchmark) -> float | None:
    """The median per-iteration time pytest-benchmark measured (None with --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None)
    return getattr(inner, "median", None)
