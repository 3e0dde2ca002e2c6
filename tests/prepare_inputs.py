"""What the prepare_images tests share: their uint8 images (random ones, and natural ones with
what photos have), the one-ulp rule of the bilinear path, the second op version's arguments,
and the mark that skips the CUDA tests on a machine without a GPU."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

MODES = ("resize", "letterbox", "pad")  # by default unrounded F.interpolate bilinear: 1 ulp
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [(37, 53), (64, 48), (1, 1), (500, 375), (2, 71)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the CUDA "
                                "kernel is only compile-checked (tests/test_extension_build.py)")


def uint8_images(sizes=SIZES, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, channels), generator=g, dtype=torch.uint8) for h, w in sizes]


def assert_within_one_ulp(out: torch.Tensor, ref: torch.Tensor):
    """|out - ref| <= 1 unit in the last place of the output dtype at ref's value, plus the fp32
    tolerance (1e-5 absolute; the normalised values are O(1)) of the arithmetic before the cast:
    that term matters only near zero, where x / 255 - mean cancels most significant bits and an
    fp16 ulp is far below fp32 rounding of the operands."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    a, b = out.float(), ref.float()
    diff = (a - b).abs()
    if out.dtype == torch.float32:
        tol = torch.full_like(b, 1e-5)
    else:
        fi = torch.finfo(out.dtype)
        tol = fi.eps * torch.exp2(torch.floor(torch.log2(b.abs().clamp_min(fi.tiny)))) + 1e-5
    bad = diff > tol
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} values off by more than 1 ulp; worst "
        f"{diff.max().item()} at {tuple(int(i) for i in torch.nonzero(bad)[0])}"
    )


@functools.lru_cache(maxsize=None)
def natural_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A uint8 HWC (HW for channels=0) image with what photos have: smooth gradients, hard edges
    between flat regions (some pure black and white, where bicubic overshoots and Pillow clips),
    fine texture and sensor noise."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    c = max(channels, 1)
    img = np.empty((h, w, c))
    for k in range(c):
        a, b, phase = g.uniform(-1, 1, 3)
        img[..., k] = 120 + 80 * (a * x + b * y) + 35 * np.sin(2 * np.pi * (2 + k) * x * y + phase)
    for value in ([0.0] * c, [255.0] * c, g.uniform(0, 255, c), g.uniform(0, 255, c)):
        cy, cx, r = g.uniform(0.2, 0.8), g.uniform(0.2, 0.8), g.uniform(0.08, 0.25)
        img[(y - cy) ** 2 + (x - cx * w / max(h, w)) ** 2 < r * r] = value
    img[: h // 3, w // 2:] += 14 * np.sin(x[: h // 3, w // 2:] * max(h, w) * 1.9)[..., None]  # stripes
    img += g.normal(0, 3, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    img.setflags(write=False)  # cached: shared by the tests
    return img[..., 0] if channels == 0 else img


def v2_args(filter_):
    packed = torch.randint(0, 256, (5 * 7 * 3 + 6 * 9,), dtype=torch.uint8)
    # (source, offset, h, w, c, resized h, w, top, left, window h, w)
    meta = torch.tensor([[0, 0, 5, 7, 3, 11, 13, 2, 3, 6, 7], [0, 105, 6, 9, 1, 4, 3, 0, 0, 4, 3],
                         [0, 0, 5, 7, 3, 5, 7, 1, 0, 4, 7]])
    return [packed], meta, filter_
