"""Process-wide count of kernel launches.

Tests prove that a kernel really ran by counting its launches, never by inferring it from the
result. Every launcher calls :func:`record_launch` right before it launches.
"""
from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Iterator

import torch

_lock = threading.Lock()
_totals: Counter = Counter()
_active: list[Counter] = []


def record_launch(name: str, count: int = 1) -> None:
    """Note ``count`` launches of the kernel ``name`` (in the totals and every open counter).
    Skipped while dynamo traces (it cannot trace the lock): the launchers run inside custom ops
    and count at run time, but the torch fallback of ``pointwise_gated`` is traced inline."""
    if torch.compiler.is_compiling():
        return
    with _lock:
        _totals[name] += count
        for counter in _active:
            counter[name] += count


def launch_counts() -> Counter:
    """A copy of the launches recorded since the process started."""
    with _lock:
        return Counter(_totals)


@contextlib.contextmanager
def count_launches() -> Iterator[Counter]:
    """Yield a Counter that receives every launch made inside the ``with`` block."""
    counter: Counter = Counter()
    with _lock:
        _active.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            _active.remove(counter)
