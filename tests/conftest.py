"""Shared fixtures and the test markers.

Markers (registered in pyproject.toml):

- ``gpu``: needs a CUDA GPU; skipped, with that reason, where there is none;
- ``interpreter``: launches Triton kernels, through the CPU interpreter on a machine without a
  GPU; on a GPU machine the same tests run the kernels on CUDA, so there they count as ``gpu``
  too (``-m gpu`` then selects every test that exercises the GPU);
- ``subprocess``: runs a child Python process (slow to start);
- ``slow``: long-running (large interpreted shapes, the B1-B7 structures); ``make test-fast``
  leaves out ``slow``, ``subprocess`` and ``interpreter``.
"""
from __future__ import annotations

import gc
import os
import sys

import pytest
import torch

from .helpers import DEVICE, HAS_CUDA, bf16_casts_round_to_nearest

# For the ``deterministic`` fixture on a GPU: torch reads CUBLAS_WORKSPACE_CONFIG once per
# process, at its first cuBLAS call, and then refuses cuBLAS in deterministic mode unless the
# workspace is fixed; a test cannot set it for itself once an earlier test has used cuBLAS.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if HAS_CUDA and "interpreter" in item.keywords:
            item.add_marker(pytest.mark.gpu(interpreter=True))  # tools/gpu_check_plugin.py tells them apart
        elif not HAS_CUDA and "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def interpreter_rounds_bf16_as_a_gpu():
    """Every test: the interpreter's fp32 -> bf16 cast rounds as a GPU's does (see the helper)."""
    with bf16_casts_round_to_nearest():
        yield


@pytest.fixture
def frees_cuda_memory():
    """For tests that take many GiB on the GPU: their blocks go back to the device afterwards
    instead of staying in this worker's cache, out of reach of the other workers' tests."""
    yield
    if torch.cuda.is_available():
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):  # a failure's frames
            if hasattr(sys, name):
                delattr(sys, name)
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture
def device() -> str:
    """Where kernels run: CUDA if present, else the CPU through Triton's interpreter."""
    return DEVICE


@pytest.fixture
def pointwise_on_triton(monkeypatch):
    """Every 1x1 conv on the Triton kernel, so exact launch counts hold on CUDA too."""
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "triton")


@pytest.fixture
def expand_dw_separate(monkeypatch):
    """Every block's expand and depthwise convs as two launches (the layer-by-layer path), so
    launch counts do not depend on the expand + depthwise plan."""
    monkeypatch.setenv("FASTMBCONV_EXPAND_DW", "separate")


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test (cuBLAS's workspace fixed above)."""
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8"), "cuBLAS refuses deterministic mode"
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
