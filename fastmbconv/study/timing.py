"""Synchronised timing: median and interquartile range of repeated calls."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch


@contextlib.contextmanager
def timing_settings() -> Iterator[dict]:
    """The backend flags of every timed run, the study's and the benchmarks' alike (restored on
    exit): cuDNN times its conv algorithms and keeps the fastest (``cudnn.benchmark``, as timm's
    benchmark script runs eager), and fp32 stays IEEE fp32 on cuDNN and cuBLAS (no TF32), as the
    fused kernels compute it. Yields the flags, for the results' metadata."""
    flags = {"cudnn_benchmark": True, "cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn_allow_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = flags["matmul_allow_tf32"]
    try:
        yield flags
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_event_seconds(fn, device: torch.device) -> float:
    """Seconds of ``fn()``'s GPU work, by two CUDA events on ``device``'s current stream, the one
    its work is queued on: recorded without a stream, they would sit on the *current* GPU's
    stream, which ``cuda:1`` does not wait for."""
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    fn()
    end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / 1e3


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


def time_runner(runner, reps: int = 20, min_seconds: float = 0.0, max_seconds: float = 5.0) -> Timing:
    """Median of ``reps`` synchronised calls of a :class:`~fastmbconv.study.providers.Runner` (more if ``min_seconds`` is not yet reached, fewer
    if ``max_seconds`` is). CUDA events on a GPU, ``perf_counter`` on the CPU."""
    times: list[float] = []
    device = runner.device
    begin = time.perf_counter()
    while True:
        if device.type == "cuda":
            times.append(cuda_event_seconds(runner.call, device))
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
