"""What prepare_images decides before any pixel is touched (fastmbconv._prepare_plan): the
pad mode's aligned size, which 4-d batches are NHWC, the letterbox sizes and the 32-bit
size limit; each through the op and its reference where both apply."""
from __future__ import annotations

import pytest
import torch

from fastmbconv._prepare_plan import checked_size
from fastmbconv.prepare import letterbox_size, prepare_images, prepare_images_ref


@pytest.mark.parametrize("fn", [prepare_images, prepare_images_ref], ids=["op", "ref"])
def test_pad_mode_adds_no_block_to_an_already_aligned_side(fn):
    """pad rounds the largest side up to ``align``: a side already a multiple stays as it is."""
    images = [torch.full((32, 17, 3), 7, dtype=torch.uint8), torch.full((16, 48, 3), 7, dtype=torch.uint8)]
    out, valid = fn(images, mode="pad", align=16)
    assert out.shape == (2, 3, 32, 48) and valid.tolist() == [[32, 17], [16, 48]]
    out, _ = fn(images[:1], mode="pad", align=32)
    assert out.shape == (1, 3, 32, 32)
    # pad resizes nothing, so a timm cfg's interpolation="bicubic" (antialias off by default) is fine
    bicubic, _ = fn(images, mode="pad", align=16, interpolation="bicubic")
    assert torch.equal(bicubic, fn(images, mode="pad", align=16)[0])


@pytest.mark.parametrize("fn", [prepare_images, prepare_images_ref], ids=["op", "ref"])
def test_nhwc_batches_of_1_or_3_rows_are_not_taken_for_nchw(fn):
    """A batch whose height is 1 or 3 is NHWC when its last dim is 1 or 3 channels."""
    for shape in [(2, 3, 5, 3), (2, 1, 6, 1), (2, 3, 4, 1)]:
        out, valid = fn(torch.full(shape, 9, dtype=torch.uint8), 8, mode="resize")
        assert out.shape == (2, 3, 8, 8) and valid.tolist() == [[8, 8]] * 2


def test_letterbox_size():
    assert letterbox_size(375, 500, 64) == (48, 64)
    assert letterbox_size(500, 375, 64) == (64, 48)
    assert letterbox_size(1, 1, 7) == (7, 7)
    assert letterbox_size(1, 1000, 64) == (1, 64)  # the shorter side is at least 1,
    assert letterbox_size(1000, 1, 64) == (64, 1)  # for a tall image's width as for a wide image's height
    assert letterbox_size(3, 2, 3) == (3, 2)  # 2 * 3 / 3
    assert letterbox_size(4, 2, 3) == (3, 2)  # 1.5 rounds up


def test_sizes_up_to_int32_max():
    """A target size of exactly 2**31 - 1 is still a valid 32-bit size (2**31 is refused,
    test_prepare.py::test_bad_input)."""
    assert checked_size(2**31 - 1, "resize") == (2**31 - 1, 2**31 - 1)
    assert checked_size((2**31 - 1, 1), "center_crop") == (2**31 - 1, 1)
