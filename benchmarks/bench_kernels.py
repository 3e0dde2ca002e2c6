"""Kernel-level benchmarks (GPU only): depthwise conv + BN + SiLU (+ SE pool), the SE gate, and the
gated pointwise 1x1 (expand and project), at every distinct shape B0 and B4 run at their native
resolutions. The shapes come from the layer walk (``fastmbconv.shapes.block_shapes``).

Inputs rotate through enough copies that each pass reads several L2 caches' worth, so a case
reads HBM as the forward does. B0's depthwise cases also run at batch 256, the depthwise target's
(>= 70% of a device-to-device copy's bytes/s at stages 2 and 3; long enough per launch that
launch overhead does not decide it).

Pointwise cases run two ways, ``triton`` and ``torch`` (cuBLAS), with the chooser's pick
(``choose_pointwise_impl``) recorded in ``extra_info["chosen_impl"]``, so the summary can show
whether it picked the faster one. Each round is several back-to-back launches followed
by one device synchronise inside the timed region; the stats are per launch.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from fastmbconv import study
from fastmbconv.geometry import conv_padding, out_size

from _providers import kernel_cases, median_seconds, pedantic

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ROUND_S = 1e-3  # aim for rounds of about a millisecond
BUDGET_S = 0.3
MAX_INPUT_SETS = 1024


def _import(module: str):
    try:
        return __import__(f"fastmbconv.kernels.{module}", fromlist=["_"])
    except ImportError as exc:  # triton missing: the kernels cannot run here
        pytest.skip(f"fastmbconv.kernels.{module} does not import: {type(exc).__name__}: {exc}")


def _rotating(make_inputs, input_bytes: int, device):
    """``make_inputs()`` (one call's activations, ``input_bytes`` of them) called enough times
    that the sets add up to four L2 caches, and a function returning the next set on each call:
    back-to-back launches then read their inputs from HBM, as in a forward, not from L2 (50 MB
    on an H100, more than a B0 stage-3 depthwise conv's input at batch 32). At most
    ``MAX_INPUT_SETS``, so inputs under 4 L2 / MAX_INPUT_SETS (200-240 KiB) add up to less than
    four caches; B0's smallest maps (192 x 7 x 7 at batch 32: 0.6 MiB) still reach them."""
    l2 = 50 << 20
    if torch.device(device).type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", l2) or l2
    sets = [make_inputs() for _ in range(max(1, min(MAX_INPUT_SETS, -(-4 * l2 // max(1, input_bytes)))))]
    state = [0]

    def next_set():
        state[0] = (state[0] + 1) % len(sets)
        return sets[state[0]]

    return next_set, len(sets)


def _make(op, batch, dtype, shape, impl, device):
    """(call, flops, bytes, extra) for one kernel case, with random inputs, called as the fused
    forward calls the kernel (the weights in the layout the fold gives them)."""
    n, dt = batch, DTYPES[dtype]
    b = torch.empty((), dtype=dt).element_size()
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
    cl = torch.channels_last
    if op == "dwconv_bn_act":
        mod = _import("dwconv_bn_act")
        c, h, w, k, s, _ = shape
        conv_weight = rnd(c, 1, k, k) * 0.2
        taps = mod.taps_major(conv_weight)
        if impl == "torch":  # cuDNN's (C, 1, k, k) in the activations' dtype, as the fold keeps it
            weight = conv_weight.to(dt)
        else:
            weight = mod.taps_diag(taps, dt) if dt in (torch.float16, torch.bfloat16) else taps
        scale, shift = rnd(c).abs() + 0.5, rnd(c) * 0.1
        padding = conv_padding(h, w, k, s, "symmetric")
        ho, wo = out_size(h, s), out_size(w, s)
        next_x, sets = _rotating(lambda: rnd(n, c, h, w, dtype=dt).contiguous(memory_format=cl), n * c * h * w * b,
                                 device)

        def call():
            return mod.dwconv_bn_act(next_x(), weight, scale, shift, padding, s, act="silu", with_pool=True,
                                     impl=impl)

        flops = 2 * n * c * k * k * ho * wo
        nbytes = n * c * (h * w + ho * wo) * b + (c * k * k + 2 * c) * 4 + n * c * 4
        return call, flops, nbytes, {"C": c, "H": h, "W": w, "kernel": k, "stride": s, "input_sets": sets}
    if op == "squeeze_excite":
        mod = _import("squeeze_excite")
        c, r, hw = shape
        pool = rnd(n, c) * hw
        wr, br, we, be = rnd(r, c) * 0.1, rnd(r) * 0.1, rnd(c, r) * 0.1, rnd(c) * 0.1

        def call():
            return mod.squeeze_excite_gate(pool, wr, br, we, be, hw=hw)

        flops = 4 * n * c * r
        nbytes = (n * c * 2 + 2 * r * c + r + c) * 4
        return call, flops, nbytes, {"C": c, "R": r, "HW": hw}
    # pointwise expand / project
    mod = _import("pointwise_gated")
    k_in, o, h, w, skip = shape
    project = op == "pointwise_project"
    weight = (rnd(o, k_in) / math.sqrt(k_in)).to(dt)
    bias = rnd(o) * 0.1

    def inputs():
        x = rnd(n, k_in, h, w, dtype=dt).contiguous(memory_format=cl)
        gate = torch.rand(n, k_in, generator=g, device=device) if project else None
        residual = rnd(n, o, h, w, dtype=dt).contiguous(memory_format=cl) if project and skip else None
        return x, gate, residual

    has_residual = project and skip
    activations_read = n * h * w * (k_in + (o if has_residual else 0)) * b  # x and the residual
    nbytes = activations_read + (n * h * w * o + o * k_in) * b + o * 4 + (n * k_in * 4 if project else 0)
    next_inputs, sets = _rotating(inputs, activations_read, device)
    chosen = mod.choose_pointwise_impl(n * h * w, k_in, o, dt, device)

    def call():
        x, gate, residual = next_inputs()
        return mod.pointwise_gated(x, weight, bias, gate=gate, residual=residual, impl=impl)

    flops = 2 * n * h * w * k_in * o
    return call, flops, nbytes, {"M": n * h * w, "K": k_in, "N": o, "H": h, "W": w, "gate": project,
                                 "residual": has_residual, "chosen_impl": chosen, "input_sets": sets}


def time_call(benchmark, call, device) -> None:
    """Warm ``call`` up, size its rounds and time it, all under ``no_grad`` as the fused forward
    runs: with autograd on, each launch would go through the custom op's dispatch (host time
    the forward does not spend)."""
    with torch.no_grad():
        for _ in range(3):  # compile / autotune, untimed
            call()
        study.sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            call()
        study.sync(device)
        per = max((time.perf_counter() - t0) / 10, 1e-7)
        iterations = max(1, int(ROUND_S / per))
        rounds = int(min(100, max(10, BUDGET_S / (per * iterations))))
        pedantic(benchmark, call, device, rounds=rounds, iterations=iterations, warmup_rounds=2)


@pytest.mark.parametrize("case", kernel_cases())
def test_kernel(case, benchmark, bandwidth, kernel_results):
    op, model, batch, dtype, shape, impl = case
    if not torch.cuda.is_available():
        pytest.skip("kernel benchmark: the Triton kernels need a CUDA GPU")
    device = torch.device("cuda")
    call, flops, nbytes, extra = _make(op, batch, dtype, shape, impl, device)
    benchmark.group = f"{op}-{study.short_name(model)}-bs{batch}-{dtype}"
    time_call(benchmark, call, device)

    median = median_seconds(benchmark)
    bw = bandwidth(device)
    info = {"op": op, "model": model, "batch": batch, "dtype": dtype, "impl": impl,
            "device_name": study.device_name(device), "flops": flops, "bytes": nbytes,
            "bandwidth_gb_s": bw.gb_s, **extra}
    if median:
        info.update(tflops=flops / median / 1e12, gb_s=nbytes / median / 1e9,
                    floor_fraction=study.floor_fraction(median, nbytes, bw))
    benchmark.extra_info.update(info)
    row = {"op": op, "model": model, "batch": batch, "dtype": dtype, "impl": impl, "median_s": median}
    if op.startswith("pointwise"):
        role = op.split("_")[1]
        key = (f"{study.short_name(model)} bs{batch} {dtype} {role} {extra['K']}x{extra['N']} "
               f"{extra['H']}x{extra['W']}{' +res' if extra['residual'] else ''}")
        kernel_results.append({**row, "shape_key": key, "chosen_impl": extra["chosen_impl"]})
    elif op == "dwconv_bn_act":  # the depthwise target (fastmbconv.study.targets) reads these
        kernel_results.append({**row, "shape": list(shape[:5]), "floor_fraction": info.get("floor_fraction")})
