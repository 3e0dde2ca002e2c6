"""The measured memory ceiling: device copy bandwidth, and a timing as a fraction of the floor."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .timing import cuda_event_seconds


@dataclass(frozen=True)
class Bandwidth:
    """A measured copy bandwidth (bytes read + bytes written per second)."""

    bytes_per_s: float
    device: str
    kind: str  # "device copy (HBM)" or "host memcpy (system RAM)"
    nbytes: int
    method: str

    @property
    def gb_s(self) -> float:
        return self.bytes_per_s / 1e9

    def as_dict(self) -> dict:
        return {"gb_s": self.gb_s, "device": self.device, "kind": self.kind,
                "buffer_mb": self.nbytes / 1e6, "method": self.method}


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure_copy_bandwidth(device="cuda", nbytes: int | None = None, iters: int | None = None) -> Bandwidth:
    """Measure copy bandwidth on ``device`` now, with ``dst.copy_(src)`` of a large buffer.

    CUDA: device-to-device copy of a buffer far larger than L2 (1 GiB by default), timed with
    CUDA events over several copies after a warm-up; bandwidth counts the bytes read plus the
    bytes written. CPU: the same copy in host memory (a memcpy), labelled as host memory."""
    device = torch.device(device)
    if device.type == "cuda":
        nbytes = nbytes or (1 << 30)
        iters = iters or 20
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize(device)
        times = [cuda_event_seconds(lambda: dst.copy_(src), device) for _ in range(iters)]
        med = sorted(times)[len(times) // 2]
        del src, dst
        return Bandwidth(2 * nbytes / med, device_name(device), "device copy (HBM)", nbytes,
                         f"median of {iters} device-to-device copy_ timed with CUDA events")
    nbytes = nbytes or (64 << 20)
    iters = iters or 5
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    return Bandwidth(2 * nbytes / med, device_name(device), "host memcpy (system RAM)", nbytes,
                     f"median of {iters} host copy_ of {nbytes >> 20} MiB timed with perf_counter")


def floor_seconds(nbytes: float, bandwidth: Bandwidth | float) -> float:
    """Time to move ``nbytes`` at the measured bandwidth (bytes/s or a :class:`Bandwidth`)."""
    bw = bandwidth.bytes_per_s if isinstance(bandwidth, Bandwidth) else float(bandwidth)
    return nbytes / bw if bw > 0 else math.nan


def floor_fraction(seconds: float, nbytes: float, bandwidth: Bandwidth | float) -> float:
    """Fraction of the memory floor reached: floor time / measured time (1.0 = at the floor)."""
    if not seconds or seconds <= 0:
        return math.nan
    return floor_seconds(nbytes, bandwidth) / seconds
