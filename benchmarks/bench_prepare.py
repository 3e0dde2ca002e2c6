"""Benchmark: one-pass prepare_images (the fastmbconv::prepare_images_v2 op) against the same
work done with torch ops one image at a time (prepare_images_ref: F.interpolate + crop +
normalise + cast, then stack), on decoded uint8 images of assorted sizes around 500x375.

    pytest benchmarks/bench_prepare.py            # -s to see the printed ratios

Two workloads: ``resize`` (bilinear to 224x224, F.interpolate's arithmetic) and ``eval``
(timm's eval preprocessing of EfficientNet-B0: shorter side to 256 with Pillow's antialiased
bicubic, centre crop 224; the torch composition is two antialiased F.interpolate passes).
GPU: 256 images already on the device, fp16; target >= 3x the torch composition's throughput.
Without CUDA the GPU cases skip and small CPU cases (8 images) run. All report images/s and the
ratio in ``benchmark.extra_info``.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from fastmbconv import _ext
from fastmbconv.prepare import IMAGENET_STD, prepare_images, prepare_images_ref

SIZE = 224
WORKLOADS = {
    "resize": (dict(mode="resize"), 2e-2),
    # one 8-bit step (Pillow rounds in fixed point, the twin in fp32) plus an fp16 ulp
    "eval": (dict(mode="center_crop", crop_pct=0.875, interpolation="bicubic"),
             1 / (255 * min(IMAGENET_STD)) + 4e-3),
}


def _decoded(n: int, seed: int = 0):
    """n uint8 HWC images, landscape and portrait, sides within about 15% of 500x375."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        long = int(torch.randint(430, 571, (1,), generator=g))
        short = int(torch.randint(320, 431, (1,), generator=g))
        h, w = (short, long) if i % 3 else (long, short)
        out.append(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8))
    return out


def _median_seconds(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _compare(benchmark, images, device: str, dtype, rounds: int, reps: int, workload: str = "resize"):
    _ext.load()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kwargs, tol = WORKLOADS[workload]

    def ours():
        out = prepare_images(images, SIZE, dtype=dtype, **kwargs)
        sync()  # on GPU the timed call includes the kernel, not just its launch
        return out

    def torch_ops():
        out = prepare_images_ref(images, SIZE, dtype=dtype, **kwargs)
        sync()
        return out

    # Same result, then time the torch composition by hand and ours with pytest-benchmark.
    a, _ = ours()
    b, _ = torch_ops()
    assert a.shape == b.shape and (a.float() - b.float()).abs().max().item() < tol
    t_torch = _median_seconds(torch_ops, reps, sync)
    benchmark.pedantic(ours, rounds=rounds, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    t_ours = stats.stats.median if stats is not None else _median_seconds(ours, reps, sync)
    n = len(images)
    ratio = t_torch / t_ours
    benchmark.extra_info.update(
        workload=workload,
        device=device,
        images=n,
        size=SIZE,
        dtype=str(dtype),
        ours_img_per_s=round(n / t_ours, 1),
        torch_ops_img_per_s=round(n / t_torch, 1),
        throughput_ratio=round(ratio, 2),
    )
    print(f"\nprepare_images ({workload}) on {device}, {n} images -> {SIZE}px {dtype}: {n / t_ours:,.0f} img/s "
          f"vs torch ops {n / t_torch:,.0f} img/s: {ratio:.2f}x")
    return ratio


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the GPU benchmark needs one (the CPU case runs instead)")
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_prepare_gpu_256(benchmark, workload):
    if not _ext.has_cuda_kernels():
        pytest.skip("fastmbconv._C was built without CUDA kernels")
    images = [im.cuda() for im in _decoded(256)]  # decoded on the device (e.g. by nvjpeg)
    ratio = _compare(benchmark, images, "cuda", torch.float16, rounds=20, reps=5, workload=workload)
    benchmark.extra_info["target_ratio"] = 3.0
    benchmark.extra_info["target_met"] = ratio >= 3.0


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_prepare_cpu_8(benchmark, workload):
    _compare(benchmark, _decoded(8), "cpu", torch.float32, rounds=5, reps=3, workload=workload)
