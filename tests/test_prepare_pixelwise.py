"""The CUDA image-preparation kernel's per-pixel arithmetic, checked on the CPU.

The CUDA op computes each output pixel on its own (``window_pixel`` in csrc/prepare_math.h);
the CPU op keeps each first-pass row and reuses it. Both must give the same fp32 bits, and the
GPU tests can check that only on a GPU. Here tests/csrc/prepare_pixelwise.cpp runs
``window_pixel`` on the host, over the same table and without FMA contraction (as the kernel,
built with ``--fmad=false``), and every case must equal the CPU op exactly.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

from fastmbconv import _ext
from fastmbconv.prepare import IMAGENET_MEAN, IMAGENET_STD, pillow_vertical_first

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow  # a C++ build (~10 s)


@pytest.fixture(scope="module")
def pixelwise(tmp_path_factory):
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as error:
        pytest.fail(f"building the host harness needs ninja (pip install ninja, in the [test] extra): {error}")
    cpp_extension.load(
        "fastmbconv_pixelwise", [os.path.join(HERE, "csrc", "prepare_pixelwise.cpp")],
        extra_include_paths=[os.path.join(HERE, "..", "csrc")], extra_cflags=["-O2", "-ffp-contract=off"],
        is_python_module=False, build_directory=str(tmp_path_factory.mktemp("pixelwise")))
    return torch.ops.fastmbconv_pixelwise.prepare


def _case(rng: random.Random):
    """A batch of 1-3 random images (sizes, channels, resize, window) and its table."""
    images, rows = [], []
    out_h, out_w = rng.randint(1, 24), rng.randint(1, 24)
    for i in range(rng.randint(1, 3)):
        h, w, c = rng.randint(1, 160), rng.randint(1, 160), rng.choice([1, 3])
        sh = rng.choice([h, rng.randint(1, 60), max(1, h // rng.randint(2, 40))])
        sw = rng.choice([w, rng.randint(1, 60), max(1, w // rng.randint(2, 40))])
        rh, rw = rng.randint(1, min(sh, out_h)), rng.randint(1, min(sw, out_w))
        top, left = rng.randint(0, sh - rh), rng.randint(0, sw - rw)
        images.append(torch.randint(0, 256, (h, w, c), dtype=torch.uint8))
        rows.append([i, 0, h, w, c, sh, sw, top, left, rh, rw])
    return images, torch.tensor(rows, dtype=torch.int64), out_h, out_w


def test_the_kernels_per_pixel_path_equals_the_cpu_op_bit_for_bit(pixelwise):
    rng = random.Random(0)
    seen = set()
    for _ in range(150):
        images, meta, out_h, out_w = _case(rng)
        for filter in (0, 1, 2):
            cpu = _ext.ops().prepare_images_v2(images, meta, filter, out_h, out_w, torch.float32,
                                                IMAGENET_MEAN, IMAGENET_STD)
            host = pixelwise(images, meta, filter, out_h, out_w, IMAGENET_MEAN, IMAGENET_STD)
            assert torch.equal(cpu, host), (filter, meta.tolist(), out_h, out_w, (cpu - host).abs().max())
        for _, _, h, w, c, sh, sw, *_ in meta.tolist():
            both = h != sh and w != sw
            seen.add((c, "both" if both else "one" if (h != sh or w != sw) else "none",
                      both and pillow_vertical_first(h, w, sh, sw)))
    # every kind of pixel ran: grey and RGB, each unresized, resized on one axis, on both (and
    # with the vertical pass first)
    assert {(c, k) for c in (1, 3) for k in ("none", "one", "both")} <= {(c, k) for c, k, _ in seen}
    assert {c for c, _, vertical_first in seen if vertical_first} == {1, 3}
