"""Root conftest: with no GPU, run Triton kernels through its CPU interpreter.

TRITON_INTERPRET must be set before anything imports triton (timm and torch._dynamo do), and
cannot be toggled per test, so it is decided here, once, before collection.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The fp32 tolerance (1e-4) is for IEEE fp32: cuDNN's convs and cuBLAS default to TF32 (10
# mantissa bits, ~1e-3 at B0's 224 px), and an fp32 reference on cuDNN must not use it. Set
# everywhere, so the test that asserts it (tests/fused/test_peers.py) checks this line on a CPU.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
