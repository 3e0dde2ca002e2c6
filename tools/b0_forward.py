#!/usr/bin/env python3
"""EfficientNet-B0 forward driver for the GPU check stages (``tools/gpu_check.py``).

    b0_forward.py warm      --device cuda --dtype fp16 --resolution 224 --batches 256,1 --json warm.json
    b0_forward.py profile   --provider fused|eager --device cuda --dtype fp16 --resolution 224 --batch 256
    b0_forward.py bandwidth --device cuda --json bandwidth.json
    b0_forward.py host      --device cuda --dtype fp16 --resolution 224 --batch 1 --json host.json

* ``warm``: the fused forward at each batch, timed cold (first call: Triton compiles and autotunes
  every B0 layer shape, or reads them from the cache) and warm, and compared with the reference
  modules on the same input. With a restored cache the first call should be close to the second;
  the difference is what the cache saved. Fails on a non-finite output or a relative error
  (||fused - reference|| / ||reference||) over ``--max-rel-err``.
* ``profile``: warm-up forwards, then exactly one forward inside the NVTX push/pop range
  ``--nvtx`` (default ``b0_<provider>``), so ``ncu --nvtx --nvtx-include b0_fused/`` profiles that
  forward's kernels and nothing else. ``eager`` is the reference modules (cuDNN on a GPU).
* ``bandwidth``: :func:`fastmbconv.measure_copy_bandwidth` on the device, as JSON.
* ``host``: where the fused forward's host time goes, at a batch small enough that the host
  bounds it (at batch 1 the fused forward took 16.5 ms on an H100, 0.45 ms as a CUDA graph).
  Milliseconds per forward, each over ``--repeat`` back-to-back forwards and one synchronise:
  fused; fused with its Triton launches recorded instead of made (the package's own Python and
  torch's work, without Triton's launch path or the launcher's per-launch counters, locks and
  device guard); and eager. Then ``cProfile`` over as many fused forwards: its ``--top``
  functions by own time and by cumulative time, per forward (the profiler slows Python down:
  read its shares, and the unprofiled times above for time).

Eval mode, channels_last, random weights and inputs (seeded), under the benchmarks' backend flags
(``fastmbconv.study.timing_settings``: cuDNN benchmark mode, no TF32). On a CPU (the dry mode) the fused
path runs through Triton's interpreter when ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fastmbconv
from fastmbconv.study import timing_settings

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BACKENDS = {"fused": "fused", "eager": "reference"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    model = fastmbconv.efficientnet_b0().eval()
    return model.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)


def make_input(batch: int, resolution: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen, device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last)


def forward(model: torch.nn.Module, x: torch.Tensor, provider: str) -> torch.Tensor:
    with torch.no_grad(), fastmbconv.use_backend(BACKENDS[provider]):
        return model(x)


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def warm(a) -> int:
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    model = build(device, dtype)
    rows, ok = [], True
    for batch in a.batches:
        x = make_input(batch, a.resolution, device, dtype)
        y, first = timed(lambda x=x: forward(model, x, "fused"), device)
        y, second = timed(lambda x=x: forward(model, x, "fused"), device)
        ref = forward(model, x, "eager")
        yf, rf = y.double(), ref.double()
        rel = ((yf - rf).norm() / rf.norm().clamp_min(1e-30)).item()
        finite = bool(torch.isfinite(y).all())
        good = finite and rel <= a.max_rel_err
        ok &= good
        row = {"model": "efficientnet_b0", "provider": "fused", "device": str(device), "dtype": a.dtype,
               "resolution": a.resolution, "batch": batch, "first_call_s": first, "second_call_s": second,
               "compile_and_tune_s": max(first - second, 0.0), "rel_err_vs_reference": rel, "finite": finite,
               "ok": good}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.json:  # after each batch: a step stopped at its cap keeps the batches it finished
            Path(a.json).write_text(json.dumps({"rows": rows, "max_rel_err": a.max_rel_err}, indent=2))
    return 0 if ok else 1


def profile(a) -> int:
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    model = build(device, dtype)
    x = make_input(a.batch, a.resolution, device, dtype)
    for _ in range(a.warmup):  # compile, autotune, fold: all outside the profiled range
        forward(model, x, a.provider)
    sync(device)
    name = a.nvtx or f"b0_{a.provider}"
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.nvtx.range_push(name)
    _, seconds = timed(lambda: forward(model, x, a.provider), device)
    if cuda:
        torch.cuda.nvtx.range_pop()
    print(json.dumps({"provider": a.provider, "nvtx_range": name, "device": str(device), "dtype": a.dtype,
                      "resolution": a.resolution, "batch": a.batch, "profiled_forward_s": seconds}), flush=True)
    return 0


def per_forward_ms(fn, repeat: int, device: torch.device) -> float:
    """``repeat`` back-to-back calls and one synchronise (:func:`timed`), in ms per call."""
    _, seconds = timed(lambda: [fn() for _ in range(repeat)], device)
    return seconds / repeat * 1e3


def profile_rows(stats, repeat: int, key: int, top: int) -> list:
    """The ``top`` functions of a pstats table by column ``key`` (2 own time, 3 cumulative)."""
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][key], reverse=True)[:top]
    return [{"function": f"{file}:{line}({name})", "calls_per_forward": calls / repeat,
             "own_ms_per_forward": own / repeat * 1e3, "cumulative_ms_per_forward": cum / repeat * 1e3}
            for (file, line, name), (_, calls, own, cum, _) in rows]


def host(a) -> int:
    import cProfile
    import pstats

    from fastmbconv.kernels._launch import count_launches, record_launches

    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    model = build(device, dtype)
    x = make_input(a.batch, a.resolution, device, dtype)
    for _ in range(a.warmup):  # compile, autotune, fold: before anything is timed
        forward(model, x, "fused")
        forward(model, x, "eager")

    def recorded():
        with record_launches():
            forward(model, x, "fused")

    with count_launches() as launches:
        forward(model, x, "fused")
    row = {"device": str(device), "dtype": a.dtype, "resolution": a.resolution, "batch": a.batch,
           "repeat": a.repeat, "launches_per_fused_forward": sum(launches.values()),
           "fused_ms": per_forward_ms(lambda: forward(model, x, "fused"), a.repeat, device),
           "fused_launches_recorded_ms": per_forward_ms(recorded, a.repeat, device),
           "eager_ms": per_forward_ms(lambda: forward(model, x, "eager"), a.repeat, device)}
    print(json.dumps(row), flush=True)
    if a.json:  # now and again below: a step stopped during the profile keeps the times
        Path(a.json).write_text(json.dumps(row, indent=2))
    profiler = cProfile.Profile()
    profiler.enable()
    per_forward_ms(lambda: forward(model, x, "fused"), a.repeat, device)
    profiler.disable()
    stats = pstats.Stats(profiler)
    row["profile_by_own_time"] = profile_rows(stats, a.repeat, 2, a.top)
    row["profile_by_cumulative_time"] = profile_rows(stats, a.repeat, 3, a.top)
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=2))
    return 0


def bandwidth(a) -> int:
    bw = fastmbconv.measure_copy_bandwidth(a.device)
    d = bw.as_dict()
    print(json.dumps(d), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(d, indent=2))
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    common.add_argument("--resolution", type=int, default=224)
    w = sub.add_parser("warm", parents=[common])
    w.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",") if b], default=[256, 1])
    w.add_argument("--max-rel-err", type=float, default=0.1)
    w.add_argument("--json", default=None)
    pr = sub.add_parser("profile", parents=[common])
    pr.add_argument("--provider", choices=sorted(BACKENDS), required=True)
    pr.add_argument("--batch", type=int, default=256)
    pr.add_argument("--warmup", type=int, default=3)
    pr.add_argument("--nvtx", default=None)
    h = sub.add_parser("host", parents=[common])
    h.add_argument("--batch", type=int, default=1)
    h.add_argument("--warmup", type=int, default=3)
    h.add_argument("--repeat", type=int, default=50)
    h.add_argument("--top", type=int, default=40)
    h.add_argument("--json", default=None)
    b = sub.add_parser("bandwidth")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    # the timed rows' cuDNN and TF32 flags: a profiled eager forward runs the algorithms they timed
    with timing_settings():
        return {"warm": warm, "profile": profile, "host": host, "bandwidth": bandwidth}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
