"""``triton.autotune`` with its results kept on disk where this Triton can (``cache_results``,
3.4 and later): a new process reuses the configs an earlier one measured for the same kernel
source, GPU target, key and config list, instead of autotuning every shape again. On an H200
the fused B0's first call at batch 256 spent about 50 s compiling and autotuning; Triton keeps
the compiled kernels on disk already, and now the picks beside them (``TRITON_CACHE_DIR``)."""
from __future__ import annotations

import inspect

import triton

CACHES_RESULTS = "cache_results" in inspect.signature(triton.autotune).parameters


def autotune(**kwargs):
    """``triton.autotune(**kwargs)``, with ``cache_results=True`` where supported."""
    if CACHES_RESULTS:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(**kwargs)
